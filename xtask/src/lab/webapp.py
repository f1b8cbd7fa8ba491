# The lab's vulnerable web application (docs/lab.md, "Victim services"): a small shop behind
# nginx's /app/, with the flaws that web attack tools look for. It runs inside the victim's
# network namespace, on 127.0.0.1 only. Nothing it does reaches past its own database:
#
# - /app/item?id=N          SQL injection (numeric): the id is pasted into the query, and a
#                           database error is shown to the client (error-based, boolean, UNION)
# - /app/search?q=TEXT      SQL injection (string, in LIKE) and reflected XSS (q echoed raw)
# - /app/login  (POST)      SQL injection in a login form (user, pass)
# - /app/comment (POST/GET) stored XSS: the last 50 comments are shown raw
# - /app/ping?host=H        "command injection": answers a canned ping output and echoes H;
#                           nothing is executed
# - /app/view?page=P        "file inclusion": answers a page of its own or "not found"; no file
#                           outside its table is ever read
# - /app/upload (POST)      accepts a file and throws it away
#
# The database is opened read-only for every query: a stacked or writing injection changes
# nothing (sqlite3 runs one statement per call anyway).
#
# Usage: python3 webapp.py ADDRESS PORT DB_PATH

import html
import os
import sqlite3
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ADDR, PORT, DB = sys.argv[1], int(sys.argv[2]), sys.argv[3]

WORDS = ["alpha", "bridge", "config", "daemon", "engine", "filter", "gateway", "kernel",
         "ledger", "mirror", "network", "packet", "router", "socket", "tunnel", "vector"]


def make_db():
    if os.path.exists(DB):
        os.remove(DB)
    con = sqlite3.connect(DB)
    con.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, price REAL, stock INTEGER)")
    con.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, user TEXT, pass TEXT, email TEXT)")
    for i in range(1, 101):
        name = "%s %s" % (WORDS[i % len(WORDS)], WORDS[(i * 7) % len(WORDS)])
        con.execute("INSERT INTO items VALUES (?, ?, ?, ?)", (i, name, (i * 37) % 500 / 4, i % 13))
    for i, u in enumerate(["admin", "alice", "bob", "carol", "dave"], start=1):
        con.execute("INSERT INTO users VALUES (?, ?, ?, ?)",
                    (i, u, "%08x" % (i * 2654435761 % 2**32), u + "@lab.test"))
    con.commit()
    con.close()


def query(sql):
    con = sqlite3.connect("file:%s?mode=ro" % DB, uri=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


COMMENTS = []
LOCK = threading.Lock()

PAGES = {"home": "<p>welcome to the shop</p>", "about": "<p>a small shop</p>",
         "contact": "<p>mail us at shop@lab.test</p>"}

INDEX = """<html><head><title>shop</title></head><body><h1>shop</h1>
<a href="/app/item?id=1">item 1</a> <a href="/app/item?id=2">item 2</a>
<form action="/app/search"><input name="q"><input type="submit"></form>
<form method="post" action="/app/login"><input name="user"><input name="pass" type="password">
<input type="submit"></form>
<form method="post" action="/app/comment"><input name="text"><input type="submit"></form>
<a href="/app/ping?host=10.77.0.2">ping</a> <a href="/app/view?page=home">home</a>
</body></html>
"""


class Handler(BaseHTTPRequestHandler):
    server_version = "Apache/2.4.57 (Debian)"
    sys_version = ""

    def log_message(self, *args):
        pass

    def reply(self, code, body, ctype="text/html"):
        data = body.encode("utf-8", "replace")
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def form(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(min(n, 1 << 20)) if n > 0 else b""
        ctype = self.headers.get("Content-Type", "")
        if ctype.startswith("multipart/"):
            return {}
        return {k: v[0] for k, v in urllib.parse.parse_qs(body.decode("latin-1")).items()}

    def rows(self, sql):
        try:
            return query(sql), None
        except Exception as e:  # shown to the client, as careless applications do
            return [], "<p>database error: %s</p><pre>%s</pre>" % (e, sql)

    def route(self, params):
        path = urllib.parse.urlsplit(self.path).path
        if path in ("/app", "/app/", "/app/index.html"):
            return self.reply(200, INDEX)
        if path == "/app/item":
            rows, err = self.rows("SELECT id, name, price, stock FROM items WHERE id = %s"
                                  % params.get("id", "1"))
            if err:
                return self.reply(500, err)
            body = "".join("<tr><td>%s</td><td>%s</td><td>%s</td><td>%s</td></tr>" % r
                           for r in rows)
            return self.reply(200, "<html><body><table>%s</table></body></html>" % body)
        if path == "/app/search":
            q = params.get("q", "")
            rows, err = self.rows("SELECT name, price FROM items WHERE name LIKE '%%%s%%'" % q)
            if err:
                return self.reply(500, err)
            items = "".join("<li>%s (%s)</li>" % r for r in rows[:50])
            return self.reply(200, "<html><body><p>results for %s</p><ul>%s</ul></body></html>"
                              % (q, items))
        if path == "/app/login":
            if self.command != "POST":
                return self.reply(200, INDEX)
            rows, err = self.rows("SELECT id FROM users WHERE user = '%s' AND pass = '%s'"
                                  % (params.get("user", ""), params.get("pass", "")))
            if err:
                return self.reply(500, err)
            return self.reply(200, "welcome\n" if rows else "login failed\n")
        if path == "/app/comment":
            if self.command == "POST":
                with LOCK:
                    COMMENTS.append(params.get("text", "")[:2000])
                    del COMMENTS[:-50]
            with LOCK:
                shown = "".join("<li>%s</li>" % c for c in COMMENTS)
            return self.reply(200, "<html><body><ul>%s</ul></body></html>" % shown)
        if path == "/app/ping":
            host = params.get("host", "")
            out = ("PING %s: 56 data bytes\n64 bytes: icmp_seq=0 ttl=64 time=0.1 ms\n"
                   "1 packets transmitted, 1 received\n" % host)
            return self.reply(200, "<html><body><pre>%s</pre></body></html>" % out)
        if path == "/app/view":
            page = PAGES.get(params.get("page", "home"))
            if page is None:
                return self.reply(404, "<p>not found: %s</p>" % html.escape(params.get("page", "")))
            return self.reply(200, "<html><body>%s</body></html>" % page)
        if path == "/app/upload" and self.command == "POST":
            return self.reply(200, "uploaded\n")
        return self.reply(404, "<p>not found</p>")

    def do_GET(self):
        q = urllib.parse.urlsplit(self.path).query
        self.route({k: v[0] for k, v in urllib.parse.parse_qs(q).items()})

    def do_HEAD(self):
        self.do_GET()

    def do_POST(self):
        params = {k: v[0] for k, v in
                  urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query).items()}
        params.update(self.form())
        self.route(params)


make_db()
ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer((ADDR, PORT), Handler).serve_forever()
