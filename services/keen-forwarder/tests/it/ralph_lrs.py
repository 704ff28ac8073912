"""Runs Ralph's LRS (ralph-malph) on the file-system backend for keen-forwarder's tests.

usage: python ralph_lrs.py DIR PORT USERNAME PASSWORD

As released, the FS backend creates its file on the first write and refuses every later one;
the LRS is run with the backend's write mode set to append.
"""
import json
import os
import sys

import bcrypt

directory, port, username, password = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
auth_file = os.path.join(directory, "auth.json")
with open(auth_file, "w") as f:
    json.dump(
        [
            {
                "agent": {"account": {"homePage": "https://learntrail.local", "name": "keen-forwarder"}},
                "scopes": ["all"],
                "hash": bcrypt.hashpw(password.encode(), bcrypt.gensalt()).decode(),
                "username": username,
            }
        ],
        f,
    )
os.environ["RALPH_AUTH_FILE"] = auth_file
os.environ["RALPH_RUNSERVER_BACKEND"] = "fs"
os.environ["RALPH_BACKENDS__LRS__FS__DEFAULT_DIRECTORY_PATH"] = directory
os.environ["RALPH_APP_DIR"] = directory

from ralph.backends.data.base import BaseOperationType  # noqa: E402
from ralph.backends.lrs.fs import FSLRSBackend  # noqa: E402

FSLRSBackend.default_operation_type = BaseOperationType.APPEND

import uvicorn  # noqa: E402

uvicorn.run("ralph.api:app", host="127.0.0.1", port=port, log_level="warning")
