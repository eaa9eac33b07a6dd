"""The rules: sessions and their timers, sending, inbound turns, templates, senders and
compliance, tenancy, metrics. Every function takes the app's state (:mod:`.state`) as an
argument."""
