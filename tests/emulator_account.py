"""The Twilio account the test emulators know (conftest's ``emulators`` fixture registers it)."""

EMULATOR_ACCOUNT_SID = "AC" + "5e" * 16
EMULATOR_AUTH_TOKEN = "emulator-auth-token-0123456789ab"
