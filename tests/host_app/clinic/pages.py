"""The clinic's pages: a public home page and the staff's own dashboard."""

from __future__ import annotations

from flask import Blueprint, render_template
from flask_login import current_user, login_required
from flask_wtf import FlaskForm
from wtforms import StringField
from wtforms.validators import DataRequired, Length

from .extensions import db

bp = Blueprint("pages", __name__)


class ProfileForm(FlaskForm):
    name = StringField("Name", validators=[DataRequired(), Length(max=100)])
    phone = StringField("Mobile", validators=[Length(max=16)])


@bp.get("/")
def home():
    return render_template("home.html")


@bp.get("/health")
def health():
    return {"status": "ok"}


@bp.get("/dashboard")
@login_required
def staff_dashboard():
    return render_template("staff_dashboard.html", user=current_user)


@bp.route("/account", methods=["GET", "POST"])
@login_required
def account():
    form = ProfileForm(obj=current_user)
    if form.validate_on_submit():
        current_user.name = form.name.data
        current_user.phone = form.phone.data or None
        db.session.commit()
    return render_template("account.html", form=form)
