"""Store-and-forward MQTT uplink to the eMSP (contract: docs/uplink.md).

Importing this package registers the [uplink] config section and the uplink's store migrations."""

from gateway.uplink.config import UplinkSection
from gateway.uplink.service import MqttAuthorizer, Uplink

__all__ = ["MqttAuthorizer", "Uplink", "UplinkSection"]
