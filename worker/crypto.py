"""Encryption of server secrets at rest (Fernet: AES-128-CBC + HMAC-SHA256).

The key comes from PROXWATCH_SECRET_KEY (embedded mode generates one under PROXWATCH_HOME).
Ciphertexts are what server_credentials stores; plain secrets never reach the database or a log.
"""

from __future__ import annotations

from worker.errors import ProxwatchError

from cryptography.fernet import Fernet, InvalidToken


class SecretKeyError(ProxwatchError):
    """The secret key is missing or cannot decrypt the stored credentials."""


class Box:
    def __init__(self, key: str | None):
        if not key:
            raise SecretKeyError("PROXWATCH_SECRET_KEY is not set: generate one with"
                                 " `python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'`")
        try:
            self._fernet = Fernet(key.encode() if isinstance(key, str) else key)
        except (ValueError, TypeError):
            raise SecretKeyError("PROXWATCH_SECRET_KEY is not a valid key (32 url-safe base64-encoded bytes)") from None

    def seal(self, secret: str) -> str:
        return self._fernet.encrypt(secret.encode()).decode()

    def open(self, ciphertext: str) -> str:
        try:
            return self._fernet.decrypt(ciphertext.encode()).decode()
        except InvalidToken:
            raise SecretKeyError("a stored credential cannot be decrypted with PROXWATCH_SECRET_KEY"
                                 " (was the key changed?)") from None
