"""Pseudonymous user ids: ``--hash-user-ids SALT``.

``hash_user_id(salt, user_id)`` is ``"u_"`` + the first 16 hex digits (64 bits) of
HMAC-SHA256(key=salt, message=user_id), both UTF-8. The same salt always gives the same
pseudonym, so outputs, models and logs stay joinable for whoever holds the salt (they can hash
their own user table the same way), while nobody without it can recover or test a raw id.
Keep the salt secret and the same across runs whose outputs must join. No TensorFlow here.
"""

import hashlib
import hmac

PREFIX = "u_"
HEX_DIGITS = 16


def hash_user_id(salt, user_id):
    """The pseudonym of ``user_id`` under ``salt``: 'u_' + 16 hex digits of HMAC-SHA256."""
    digest = hmac.new(salt.encode("utf-8", "surrogatepass"),
                      user_id.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()
    return PREFIX + digest[:HEX_DIGITS]


def user_id_hasher(salt):
    """A function user_id -> pseudonym for ``salt`` (which must not be empty)."""
    if not isinstance(salt, str) or not salt:
        raise ValueError("the salt of --hash-user-ids must be a non-empty string; choose a long "
                         "random secret and keep it")
    key = salt

    def hasher(user_id):
        return hash_user_id(key, user_id)
    return hasher
