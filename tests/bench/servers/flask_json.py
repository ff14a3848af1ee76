"""The Flask JSON route every HTTP contender serves in the framework round of the bench."""

from flask import Flask, jsonify

app = Flask(__name__)


@app.get("/")
def index():
    return jsonify(message="Hello, world!", items=[1, 2, 3], ok=True)
