"""The site-config schema: every model a site file holds, how one is loaded, and `validate`."""
