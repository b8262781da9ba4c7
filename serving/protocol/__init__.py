"""Request shapes shared by the router and the media workers."""
