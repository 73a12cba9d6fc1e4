"""What an id or an email may be, wherever one enters: the API's contract and the
provision-user flow. Imports nothing, so the client's contract can take these without the ledger.
"""

# NUL (U+0000) is refused in an email or id: PostgreSQL cannot store it in text, and what one
# store holds must fit the other. (The API refuses it in every body, ``api.http``.)
EMAIL_PATTERN = r"^[^@\s\x00]+@[^@\s\x00]+$"
ID_PATTERN = r"^[^\x00]*$"
# The longest id of a user, plan or tenant that the API and the provision-user flow accept.
ID_LENGTH_MAX = 256
