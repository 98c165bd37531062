"""Provider clients: each turns one rendered message into a call to one outside service and
classifies the answer as an `Outcome`."""
