"""Signing in and out (Flask-Login), with CSRF-protected forms (flask-wtf)."""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Blueprint, redirect, render_template, request, url_for
from flask_login import login_required, login_user, logout_user
from flask_wtf import FlaskForm
from wtforms import EmailField, PasswordField
from wtforms.validators import DataRequired

from .models import user_by_email

bp = Blueprint("auth", __name__)


class LoginForm(FlaskForm):
    email = EmailField("Email", validators=[DataRequired()])
    password = PasswordField("Password", validators=[DataRequired()])


@bp.route("/login", methods=["GET", "POST"])
def login():
    form = LoginForm()
    if form.validate_on_submit():
        user = user_by_email(form.email.data)
        if user is not None and user.check_password(form.password.data):
            login_user(user)
            target = request.args.get("next", "")
            # Only a path of this site: never an open redirect.
            if not target.startswith("/") or target.startswith("//") or urlsplit(target).netloc:
                return redirect(url_for("pages.staff_dashboard"))
            return redirect(request.script_root + target)
        form.password.errors.append("Wrong email or password.")
        return render_template("login.html", form=form), 401
    return render_template("login.html", form=form)


@bp.post("/logout")
@login_required
def logout():
    logout_user()
    return redirect(url_for("auth.login"))
