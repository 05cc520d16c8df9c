"""Things the server keeps between requests and across restarts."""
