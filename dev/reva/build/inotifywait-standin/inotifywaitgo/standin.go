// Package inotifywaitgo is meshfs's own stand-in for the API that reva's posix storage driver links
// against. The module version reva v2.47.0 requires is not served by the Go module proxy, and
// meshfs's dev stack never runs the posix driver (it uses decomposedfs), so the watcher here only
// reports that it is unavailable.
package inotifywaitgo

import (
	"errors"
	"log/slog"
)

// EVENT is an inotify event kind.
type EVENT int

// Event kinds the posix driver refers to.
const (
	CREATE EVENT = iota + 1
	MOVED_TO
	MOVED_FROM
	CLOSE_WRITE
	CLOSE
	DELETE
)

// Error texts the posix driver compares against.
const (
	NOT_INSTALLED = "inotifywait is not installed"
	INVALID_EVENT = "invalid event"
)

// FileEvent is one change below the watched directory.
type FileEvent struct {
	Filename string
	Events   []EVENT
	IsDir    bool
}

// Options selects what to watch.
type Options struct {
	Recursive bool
	Events    []EVENT
	Monitor   bool
}

// Settings configure one watch.
type Settings struct {
	Dir        string
	FileEvents chan FileEvent
	ErrorChan  chan error
	KillOthers bool
	Options    *Options
	Verbose    bool
	Log        *slog.Logger
}

// WatchPath reports that watching is unavailable in this build.
func WatchPath(s *Settings) {
	if s != nil && s.ErrorChan != nil {
		s.ErrorChan <- errors.New(NOT_INSTALLED)
	}
}
