"""Site load management: share the site's grid connection among active charging sessions."""
