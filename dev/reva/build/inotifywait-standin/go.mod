module github.com/pablodz/inotifywaitgo

go 1.22
