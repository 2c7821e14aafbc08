"""OCPP 1.6J for the gateway: pure framing/validation (framing.py) and the per-connection call correlation."""
