"""A person at a browser, for the login tests: signs in at oidc-provider's
own pages (the device flow's user-code page, the dev login page, the
consent page) by filling and submitting each page's form, as a person
would, and following redirects — for the code flow, through to rolemint's
loopback redirect.

Usage: browser.py CA_PEM URL LOGIN [USER_CODE]
Exits 0 once the provider says the device is signed in, or once a redirect
reached the loopback listener; prints the last page's text otherwise.
"""
import html
import re
import sys
from urllib.parse import urljoin, urlparse

import requests

ca, url, login = sys.argv[1], sys.argv[2], sys.argv[3]
user_code = sys.argv[4] if len(sys.argv) > 4 else None
values = {"login": login, "password": "pw", "user_code": user_code}

s = requests.Session()
s.verify = ca
s.trust_env = False  # REQUESTS_CA_BUNDLE would override verify
r = s.get(url, timeout=10)
for _ in range(12):
    if urlparse(r.url).hostname == "127.0.0.1" and urlparse(r.url).port != urlparse(url).port:
        sys.exit(0 if r.ok else 1)  # reached the loopback listener
    page = r.text
    if "Sign-in Success" in page or "your device" in page.lower() and "success" in page.lower():
        sys.exit(0)
    form = re.search(r'<form[^>]*action="([^"]*)"[^>]*>(.*?)</form>', page, re.S)
    if not form:
        print(page[:2000])
        sys.exit(1)
    action, body = html.unescape(form.group(1)), form.group(2)
    data = {}
    for m in re.finditer(r"<input([^>]*)>", body):
        attrs = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        name = attrs.get("name")
        if not name:
            continue
        data[name] = values.get(name) or html.unescape(attrs.get("value", ""))
    r = s.post(urljoin(r.url, action), data=data, timeout=10, allow_redirects=True)
print(r.text[:2000])
sys.exit(1)
