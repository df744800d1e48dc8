//go:build tools

// Package revabuild only pins revad as a dependency of this wrapper module.
package revabuild

import _ "github.com/opencloud-eu/reva/v2/cmd/revad"
