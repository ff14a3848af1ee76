"""A small Flask app served end to end by greenserve in the tests."""

from flask import Flask, jsonify, request

app = Flask(__name__)


@app.get("/hello/<name>")
def hello(name: str):
    return jsonify(greeting=f"hello {name}", query=request.args.get("q"))


@app.post("/items")
def create():
    return jsonify(received=request.get_json()), 201
