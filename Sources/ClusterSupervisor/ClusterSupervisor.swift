// The demo supervisor (issue 6): being written.
