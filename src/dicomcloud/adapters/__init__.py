"""One module per implementation of a port; an adapter never imports another adapter."""
