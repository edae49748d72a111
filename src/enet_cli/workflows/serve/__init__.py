"""`enet serve`: the endpoint's handler (container/) around a model run in this process
(serving/), behind an HTTP server, with a page to try it (page.html)."""
