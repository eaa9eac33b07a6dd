"""The clinic's JSON API under /v1 (the staff's single-page app calls it with its session cookie,
so its writes carry the CSRF token in an ``X-CSRFToken`` header)."""

from __future__ import annotations

from flask import Blueprint, abort, request
from flask_login import current_user, login_required
from flask_wtf.csrf import generate_csrf
from sqlalchemy import select

from .extensions import db
from .models import User

bp = Blueprint("api", __name__, url_prefix="/v1")


@bp.get("/session")
def session_info():
    """Who is signed in, and the CSRF token the app sends back on writes."""
    user = current_user.to_json() if current_user.is_authenticated else None
    return {"user": user, "csrf_token": generate_csrf()}


@bp.get("/me")
@login_required
def me():
    return current_user.to_json()


@bp.get("/staff")
@login_required
def list_staff():
    users = db.session.scalars(select(User).order_by(User.id)).all()
    return {"staff": [user.to_json() for user in users]}


@bp.post("/staff")
@login_required
def add_staff():
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not body.get("email") or not body.get("name"):
        abort(400, "email and name are required")
    user = User(email=body["email"].strip().lower(), name=body["name"], phone=body.get("phone"))
    user.set_password(body.get("password") or "")
    db.session.add(user)
    db.session.commit()
    return user.to_json(), 201


@bp.get("/staff/<int:user_id>")
@login_required
def get_staff(user_id: int):
    user = db.session.get(User, user_id)
    if user is None:
        abort(404, f"no member of staff {user_id}")
    return user.to_json()
