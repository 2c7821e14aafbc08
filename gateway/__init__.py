"""chargegate gateway: the site controller's OCPP server, store, authorization, meters and eMSP uplink."""

__version__ = "0.1.0"
