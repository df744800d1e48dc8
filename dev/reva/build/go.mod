// Wrapper module that builds revad (the CS3 reference server) for meshfs's dev stack and tests.
// The reva module's replace/exclude lines are not inherited by dependents, so they are repeated here.
module meshfs.dev/revabuild

go 1.25.8

require github.com/opencloud-eu/reva/v2 v2.47.0

replace github.com/studio-b12/gowebdav => github.com/kobergj/gowebdav v0.0.0-20250102091030-aa65266db202

replace github.com/go-micro/plugins/v4/store/nats-js-kv => github.com/opencloud-eu/go-micro-plugins/v4/store/nats-js-kv v0.0.0-20250512152754-23325793059a

exclude github.com/mattn/go-sqlite3 v2.0.3+incompatible

// v0.0.12 (what reva v2.47.0 asks for) is not served by the Go module proxy; meshfs never runs reva's
// posix driver that uses it, so a stand-in of our own satisfies the linker (see its doc comment).
replace github.com/pablodz/inotifywaitgo => ./inotifywait-standin
