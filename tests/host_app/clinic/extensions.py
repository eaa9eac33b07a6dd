"""The clinic's extensions, created once and bound to each app in ``create_app``."""

from __future__ import annotations

from flask_cors import CORS
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_login import LoginManager
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from flask_wtf.csrf import CSRFProtect

from flask_polysms import PolySMS, alembic_include_name

db = SQLAlchemy()
# flask-polysms keeps its tables in the same database: autogenerate must not see them as ours.
migrate = Migrate(include_name=alembic_include_name)
login_manager = LoginManager()
csrf = CSRFProtect()
# ProxyFix has put the client's address in REMOTE_ADDR by the time this reads it.
limiter = Limiter(get_remote_address, default_limits=["50 per hour"])
cors = CORS()
polysms = PolySMS()
