"""A handler module whose top level fails (as a Lambda's init phase can): importing it is a config error."""

_ = 1 / 0
