"""The fleet's control plane: carries out the core's scaling and placement commands over HTTP.

``plane`` puts it together (run by ``katyusha fleet up`` or on its own by
``katyusha control``, see ``cli``): ``membership`` is the one writer of
katyusha's pod sets, ``actuator`` wakes and retires slots, ``autoscaler``
feeds the per-service KPA core, ``api`` is the admin port, ``adminclient``
the one HTTP client, ``processes`` says where the fleet's processes answer.
The decisions themselves are in katyusha.core (actuation, fleetplan, scaling).
"""
