// The failover benchmark (issue 7): being written.
