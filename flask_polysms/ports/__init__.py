"""The three ports, each an abstract base class and its adapters: the Store (records; backends in
:mod:`flask_polysms.backends`), the Gateway (Twilio) and the Scheduler (jobs now or later)."""
