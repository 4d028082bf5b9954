"""The varied batch body of bench/ingest.py's ``batch-varied`` workload.

Today's bench body repeats one server-side "Order Completed" event a hundred times: it
compresses about 50x and every event takes the same path through the relay. An edge relay
that aggregates many devices receives something else, and compression, deduplication and a
typed decoder's fallbacks behave differently on it. This body is what such a relay might get
in one request:

- the message types of a real mix: mostly track, then page, identify, screen and group;
- about fifty distinct people (a userId for most, always an anonymousId), a few events each;
- event names from a catalogue of a few dozen (e-commerce, video, onboarding, feature use),
  each with its own properties: different keys, strings, numbers, booleans, nulls, lists
  and nested objects, of varying length;
- the context of the SDK that sent it: browser libraries (analytics.js, the RudderStack
  JavaScript SDK) with a userAgent, userAgentData, page, locale, screen and sometimes a
  campaign, and no context.ip (the relay fills it); mobile libraries with app, device, os,
  network; server libraries with an ip and traits;
- event times spread over the five minutes before the batch's sentAt, in the formats the
  SDKs use (a Z or an offset, milliseconds or microseconds), some as originalTimestamp.

It is generated from a fixed seed, so every run and every commit posts the same bytes. Every
event's messageId is ``placeholder``: the load generators replace each one with a fresh id on
every request (see bench/ingest.lua), so the relay stores every event of every request.

    .venv/bin/python bench/varied.py            # print the body (with the placeholders)
"""

from __future__ import annotations

import json
import random
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

SEED = 15
SENT_AT = datetime(2024, 5, 1, 12, 0, 1, tzinfo=UTC)
PEOPLE = 60

BROWSER_UAS = [
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
     "Chrome/124.0.0.0 Safari/537.36", "Windows", False, "Google Chrome", "124"),
    ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
     "Version/17.4 Safari/605.1.15", None, False, None, None),
    ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_4_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
     "Gecko) Version/17.4.1 Mobile/15E148 Safari/604.1", None, True, None, None),
    ("Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
     "Chrome/124.0.6367.82 Mobile Safari/537.36", "Android", True, "Google Chrome", "124"),
    ("Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0", None, False,
     None, None),
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
     "Chrome/124.0.0.0 Safari/537.36 Edg/124.0.2478.67", "Windows", False, "Microsoft Edge", "124"),
]
BROWSER_LIBRARIES = [("analytics.js", "next-1.70.0"), ("analytics.js", "next-1.66.0"),
                     ("analytics.js", "4.1.0"), ("RudderLabs JavaScript SDK", "3.0.3")]
MOBILE_LIBRARIES = [("analytics-ios", "4.1.8"), ("analytics-android", "4.11.3"),
                    ("analytics-kotlin", "1.15.1"), ("analytics-swift", "1.5.9"),
                    ("analytics-react-native", "2.19.1")]
SERVER_LIBRARIES = [("analytics-python", "2.3.0"), ("analytics-node", "6.2.0"),
                    ("@segment/analytics-node", "2.1.0"), ("analytics-go", "3.3.0"),
                    ("analytics-ruby", "2.4.0"), ("analytics-java", "3.5.1")]
DEVICES = [("Apple", "iPhone15,2", "ios", "iOS", "17.4.1"), ("Apple", "iPad13,4", "ios", "iPadOS", "17.3"),
           ("Google", "Pixel 8", "android", "Android", "14"),
           ("samsung", "SM-S918B", "android", "Android", "14"),
           ("Xiaomi", "2201117TY", "android", "Android", "13")]
LOCALES = ["en-US", "en-GB", "de-DE", "fr-FR", "es-ES", "pt-BR", "ja-JP", "nl-NL", "it-IT", "pl-PL"]
TIMEZONES = ["America/New_York", "Europe/London", "Europe/Berlin", "Europe/Paris", "America/Sao_Paulo",
             "Asia/Tokyo", "America/Los_Angeles", "Australia/Sydney"]
PAGES = [("/", "Home - Brew & Co"), ("/products/espresso-beans", "Espresso beans | Brew & Co"),
         ("/products/milk-frother-pro", "Milk Frother Pro | Brew & Co"), ("/cart", "Your cart"),
         ("/checkout/payment", "Checkout - Payment"), ("/blog/latte-art-basics", "Latte art basics"),
         ("/search", "Search results"), ("/account/orders", "Your orders"), ("/pricing", "Pricing"),
         ("/docs/getting-started", "Getting started")]
REFERRERS = ["", "https://www.google.com/", "https://www.bing.com/", "https://t.co/x8Kq2",
             "https://news.ycombinator.com/", "https://www.facebook.com/"]
CURRENCIES = ["EUR", "USD", "GBP", "JPY", "BRL"]
PRODUCTS = [("SKU-1001", "Espresso beans", "Coffee", 12.5), ("SKU-2002", "Milk frother", "Equipment", 17.5),
            ("SKU-2107", "Burr grinder", "Equipment", 129.0), ("SKU-3001", "Oat milk 1l", "Dairy-free", 2.49),
            ("SKU-1010", "Decaf blend", "Coffee", 11.0), ("SKU-4020", "Ceramic cup set", "Tableware", 34.9),
            ("SKU-1022", "Single origin Kenya", "Coffee", 15.75)]
WORDS = ["alpha", "beta", "dark", "light", "blue", "green", "onboarding", "checkout", "sidebar", "modal",
         "banner", "weekly", "annual", "trial", "pro", "team", "mobile", "desktop", "export", "import"]


def _product(rng: random.Random) -> dict[str, Any]:
    sku, name, category, price = rng.choice(PRODUCTS)
    product: dict[str, Any] = {"product_id": sku.lower(), "sku": sku, "name": name, "category": category,
                               "price": price, "quantity": rng.randint(1, 4)}
    if rng.random() < 0.4:
        product["variant"] = rng.choice(["250g", "500g", "1kg", "black", "white"])
    if rng.random() < 0.3:
        product["image_url"] = f"https://cdn.example.com/p/{sku.lower()}/{rng.randint(1, 9)}.jpg"
    return product


def _order(rng: random.Random) -> dict[str, Any]:
    products = [_product(rng) for _ in range(rng.randint(1, 4))]
    subtotal = round(sum(p["price"] * p["quantity"] for p in products), 2)
    return {"order_id": f"ord_{rng.getrandbits(40):010x}", "affiliation": rng.choice(["web", "app", "pos"]),
            "total": round(subtotal * 1.19, 2), "subtotal": subtotal, "tax": round(subtotal * 0.19, 2),
            "shipping": rng.choice([0, 4.95, 9.9]), "discount": rng.choice([0, 0, 5]),
            "coupon": rng.choice([None, "SPRING24", "WELCOME10"]), "currency": rng.choice(CURRENCIES),
            "products": products}


def _video(rng: random.Random) -> dict[str, Any]:
    return {"session_id": f"vs-{rng.getrandbits(32):08x}", "content_asset_id": str(rng.randint(10000, 99999)),
            "content_pod_id": f"pod-{rng.randint(1, 12)}", "position": rng.randint(0, 3600),
            "total_length": rng.choice([392, 1805, 3600]), "bitrate": rng.choice([800, 2500, 6000]),
            "framerate": rng.choice([24.0, 29.97, 60.0]),
            "video_player": rng.choice(["youtube", "vimeo", "html5"]),
            "sound": rng.randint(0, 100), "full_screen": rng.random() < 0.3, "ad_enabled": rng.random() < 0.5,
            "quality": rng.choice(["hd720", "hd1080", "4k"]), "livestream": False}


def _free(rng: random.Random) -> dict[str, Any]:
    """Properties of varied keys and shapes, as product teams add them."""
    props: dict[str, Any] = {}
    for _ in range(rng.randint(2, 9)):
        key = rng.choice(WORDS) + rng.choice(["", "_id", "_count", "Enabled", "_variant", "Name", "_ms"])
        roll = rng.random()
        if roll < 0.25:
            props[key] = rng.randint(0, 100_000)
        elif roll < 0.4:
            props[key] = round(rng.uniform(0, 1000), rng.randint(0, 4))
        elif roll < 0.55:
            props[key] = rng.random() < 0.5
        elif roll < 0.6:
            props[key] = None
        elif roll < 0.7:
            props[key] = [rng.choice(WORDS) for _ in range(rng.randint(0, 4))]
        elif roll < 0.8:
            props[key] = {rng.choice(WORDS): rng.randint(0, 9), "label": rng.choice(WORDS),
                          "nested": {"depth": 2, "on": rng.random() < 0.5}}
        else:
            props[key] = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 6)))
    return props


def _signup(rng: random.Random) -> dict[str, Any]:
    return {"method": rng.choice(["email", "google", "apple", "github"]),
            "plan": rng.choice(["free", "trial", "pro"]), "invited": rng.random() < 0.2,
            "referral_code": rng.choice([None, f"REF{rng.randint(100, 999)}"])}


def _search(rng: random.Random) -> dict[str, Any]:
    return {"query": " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 3))),
            "results": rng.randint(0, 250), "filters": {"category": rng.choice(PRODUCTS)[2],
                                                       "in_stock": rng.random() < 0.7}}


def _experiment(rng: random.Random) -> dict[str, Any]:
    return {"experiment_id": f"exp-{rng.randint(1, 40)}", "experiment_name": f"{rng.choice(WORDS)} test",
            "variation_id": rng.choice(["control", "a", "b"]), "nonInteraction": 1}


def _feature(rng: random.Random) -> dict[str, Any]:
    return {"feature": rng.choice(WORDS), "duration_ms": rng.randint(50, 90_000), **_free(rng)}


EVENTS: list[tuple[str, Callable[[random.Random], dict[str, Any]]]] = [
    ("Order Completed", _order), ("Checkout Started", _order), ("Order Refunded", _order),
    ("Product Viewed", _product), ("Product Added", _product), ("Product Removed", _product),
    ("Product Clicked", _product), ("Product Added to Wishlist", _product),
    ("Products Searched", _search), ("Product List Filtered", _search),
    ("Cart Viewed", lambda rng: {"cart_id": f"c-{rng.getrandbits(32):08x}",
                                 "products": [_product(rng) for _ in range(rng.randint(1, 3))]}),
    ("Payment Info Entered", lambda rng: {"checkout_id": f"co-{rng.getrandbits(32):08x}", "step": 3,
                                          "payment_method": rng.choice(["card", "paypal", "klarna"])}),
    ("Coupon Applied", lambda rng: {"coupon_id": rng.choice(["SPRING24", "WELCOME10"]),
                                    "discount": rng.choice([5, 10, 15])}),
    ("Video Playback Started", _video), ("Video Playback Paused", _video),
    ("Video Content Completed", _video), ("Video Ad Started", _video),
    ("Signed Up", _signup), ("Signed In", _signup), ("Signed Out", lambda rng: {}),
    ("Account Created", _signup), ("Trial Started", _signup), ("Subscription Upgraded", _signup),
    ("Invite Sent", lambda rng: {"invitee_count": rng.randint(1, 5),
                                 "role": rng.choice(["admin", "member"])}),
    ("Experiment Viewed", _experiment), ("Onboarding Step Completed", _feature),
    ("Feature Used", _feature), ("Report Exported", _feature), ("Dashboard Viewed", _feature),
    ("Settings Changed", _free), ("Notification Opened", _free), ("Push Permission Granted", _free),
    ("Button Clicked", _free), ("Form Submitted", _free), ("File Uploaded", _free),
    ("Application Opened", lambda rng: {"from_background": rng.random() < 0.5, "version": "5.12.0",
                                        "build": str(rng.randint(500, 520))}),
    ("Application Backgrounded", lambda rng: {}),
    ("Deep Link Opened", lambda rng: {"url": f"brewco://products/{rng.choice(PRODUCTS)[0].lower()}",
                                      "provider": rng.choice(["branch", "appsflyer"])}),
]


def _person(rng: random.Random, index: int) -> dict[str, Any]:
    person: dict[str, Any] = {"anonymousId": str(uuid.UUID(int=rng.getrandbits(128), version=4))}
    roll = rng.random()
    if roll < 0.45:
        person["userId"] = f"usr_{rng.getrandbits(56):014x}"
    elif roll < 0.6:
        person["userId"] = str(100000 + index * 7919)
    elif roll < 0.7:
        person["userId"] = f"{rng.choice(WORDS)}.{index}@example.com"
    person["email"] = f"{rng.choice(WORDS)}{index}@example.{rng.choice(['com', 'de', 'co.uk'])}"
    person["kind"] = rng.choices(["browser", "mobile", "server"], [5, 2, 3])[0]
    person["locale"] = rng.choice(LOCALES)
    person["timezone"] = rng.choice(TIMEZONES)
    person["ua"] = rng.choice(BROWSER_UAS)
    person["device"] = rng.choice(DEVICES)
    person["device_id"] = str(uuid.UUID(int=rng.getrandbits(128), version=4)).upper()
    return person


def _when(rng: random.Random, style: str) -> str:
    moment = SENT_AT - timedelta(milliseconds=rng.randint(0, 300_000))
    if style == "server":
        return moment.isoformat()  # +00:00, microseconds (analytics-python's form)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"  # JS, mobile


def _context(rng: random.Random, person: dict[str, Any], library: tuple[str, str],
             page: tuple[str, str]) -> dict[str, Any]:
    context: dict[str, Any] = {"library": {"name": library[0], "version": library[1]}}
    kind = person["kind"]
    if kind == "browser":
        ua, platform, mobile, brand, version = person["ua"]
        path, title = page
        query = rng.choice(["", "", "?utm_source=newsletter&utm_medium=email", f"?q={rng.choice(WORDS)}"])
        context.update({
            "userAgent": ua, "locale": person["locale"], "timezone": person["timezone"],
            "page": {"path": path, "referrer": rng.choice(REFERRERS), "search": query, "title": title,
                     "url": f"https://www.brewco.example{path}{query}"},
            "screen": {"width": rng.choice([390, 1280, 1440, 1920]),
                       "height": rng.choice([844, 800, 900, 1080]), "density": rng.choice([1, 2, 3])},
        })
        if brand is not None:
            context["userAgentData"] = {"brands": [{"brand": brand, "version": version},
                                                   {"brand": "Not-A.Brand", "version": "99"}],
                                        "mobile": mobile, "platform": platform}
        if "utm_source" in query:
            context["campaign"] = {"name": "spring_sale", "source": "newsletter", "medium": "email"}
    elif kind == "mobile":
        manufacturer, model, device_type, os_name, os_version = person["device"]
        context.update({
            "app": {"name": "Brew & Co", "version": "5.12.0", "build": str(rng.randint(500, 520)),
                    "namespace": "com.brewco.app"},
            "device": {"id": person["device_id"], "manufacturer": manufacturer, "model": model,
                       "type": device_type, "adTrackingEnabled": rng.random() < 0.3},
            "os": {"name": os_name, "version": os_version}, "locale": person["locale"],
            "timezone": person["timezone"],
            "network": {"wifi": rng.random() < 0.6, "cellular": rng.random() < 0.5,
                        "carrier": rng.choice(["T-Mobile", "Vodafone", "Orange", ""])},
            "screen": {"width": rng.choice([1170, 1080, 2048]), "height": rng.choice([2532, 2400, 2732])},
        })
    else:
        octets = (rng.randint(11, 223), rng.randint(0, 255), rng.randint(0, 255), rng.randint(1, 254))
        context["ip"] = ".".join(map(str, octets))
        if rng.random() < 0.5:
            context["traits"] = {"email": person["email"]}
    return context


def _message(rng: random.Random, person: dict[str, Any], placeholder: str) -> dict[str, Any]:
    kind = person["kind"]
    library = rng.choice({"browser": BROWSER_LIBRARIES, "mobile": MOBILE_LIBRARIES,
                          "server": SERVER_LIBRARIES}[kind])
    page = rng.choice(PAGES)
    types = {"browser": (["track", "page", "identify", "group"], [70, 22, 6, 2]),
             "mobile": (["track", "screen", "identify"], [75, 18, 7]),
             "server": (["track", "identify", "group"], [88, 9, 3])}[kind]
    msg_type = rng.choices(*types)[0]
    message: dict[str, Any] = {"type": msg_type, "messageId": placeholder}
    for key in ("userId", "anonymousId"):
        if key in person:
            message[key] = person[key]
    if msg_type == "track":
        name, properties = rng.choice(EVENTS)
        message["event"] = name
        message["properties"] = properties(rng)
    elif msg_type == "page":
        path, title = page
        message["name"] = title.split(" | ")[0]
        message["properties"] = {"path": path, "title": title, "url": f"https://www.brewco.example{path}",
                                 "referrer": rng.choice(REFERRERS)}
        if rng.random() < 0.5:
            message["category"] = rng.choice(["Shop", "Blog", "Docs"])
    elif msg_type == "screen":
        message["name"] = rng.choice(["Home", "Product Detail", "Cart", "Player", "Settings"])
        message["properties"] = {"from": rng.choice(["push", "deeplink", "tab"])}
    elif msg_type == "identify":
        message["traits"] = {"email": person["email"], "name": f"{rng.choice(WORDS).title()} Example",
                             "plan": rng.choice(["free", "trial", "pro", "team"]),
                             "createdAt": _when(rng, "server"), "logins": rng.randint(1, 400),
                             "address": {"city": rng.choice(["Berlin", "Lyon", "Austin", "Osaka"]),
                                         "country": rng.choice(["DE", "FR", "US", "JP"])}}
    else:
        message["groupId"] = f"org_{rng.randint(1, 30):04d}"
        message["traits"] = {"name": f"{rng.choice(WORDS).title()} GmbH", "employees": rng.randint(2, 5000),
                             "industry": rng.choice(["Retail", "Media", "Software"])}
    message["context"] = _context(rng, person, library, page)
    if kind == "browser":
        message["integrations"] = rng.choice([{}, {"All": True}, {"All": True, "Mixpanel": False}])
    elif kind == "server" and rng.random() < 0.5:
        message["integrations"] = {}
    time_key = "originalTimestamp" if library[0].startswith("Rudder") else "timestamp"
    message[time_key] = _when(rng, kind)
    if library[0].startswith("Rudder"):
        message["channel"] = "web"
    return message


def varied_batch(events: int, placeholder: str) -> dict[str, Any]:
    """A batch body of ``events`` varied messages, each messageId ``placeholder``."""
    rng = random.Random(SEED)
    people = [_person(rng, i) for i in range(PEOPLE)]
    batch = [_message(rng, rng.choice(people), placeholder) for _ in range(events)]
    return {"batch": batch, "sentAt": SENT_AT.strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")}


if __name__ == "__main__":
    json.dump(varied_batch(int(sys.argv[1]) if len(sys.argv) > 1 else 100, "@@MID@@"), sys.stdout, indent=1)
    sys.exit(0)
