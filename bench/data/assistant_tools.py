"""A bus worker offering everyday assistant tools (bench/tools.py, tests/test_orchestrate.py).

python assistant_tools.py ENDPOINT: registers the tools, then serves until stopped. The
answers are made up (no network): what matters is that the box picks, fills and calls them.
"""

from __future__ import annotations

import signal
import sys

from aether_box.bus.worker import Worker

worker = Worker(sys.argv[1], "assistant", heartbeat_s=0.5)

FACTORS = {
    ("km", "mi"): 0.621371,
    ("mi", "km"): 1.609344,
    ("kg", "lb"): 2.204623,
    ("lb", "kg"): 0.453592,
    ("m", "ft"): 3.280840,
    ("ft", "m"): 0.3048,
}


@worker.tool(
    "Weather forecast for a city: temperature, rain and wind.",
    effect="read",
    schema={
        "type": "object",
        "properties": {"city": {"type": "string", "minLength": 1}},
        "required": ["city"],
    },
    examples=[
        "will it rain tomorrow",
        "how warm will it be this afternoon",
        "what is the weather like in my town",
    ],
)
def weather_forecast(city: str) -> dict:
    return {"city": city, "temperature_c": 14, "rain": "light showers", "wind_kmh": 12}


@worker.tool(
    "Convert a quantity between units of length or weight (km, mi, kg, lb, m, ft).",
    effect="read",
    schema={
        "type": "object",
        "properties": {
            "value": {"type": "number"},
            "from_unit": {"type": "string", "enum": ["km", "mi", "kg", "lb", "m", "ft"]},
            "to_unit": {"type": "string", "enum": ["km", "mi", "kg", "lb", "m", "ft"]},
        },
        "required": ["value", "from_unit", "to_unit"],
    },
    examples=["how many miles is 10 km", "convert 5 kg to pounds", "6 feet in meters"],
)
def convert_units(value: float, from_unit: str, to_unit: str) -> dict:
    factor = 1.0 if from_unit == to_unit else FACTORS.get((from_unit, to_unit))
    if factor is None:
        raise ValueError(f"cannot convert {from_unit} to {to_unit}")
    return {"value": round(value * factor, 4), "unit": to_unit}


@worker.tool(
    "Send an email message to a person.",
    effect="send",
    schema={
        "type": "object",
        "properties": {
            "to": {"type": "string", "minLength": 1},
            "subject": {"type": "string"},
            "body": {"type": "string"},
        },
        "required": ["to", "subject", "body"],
    },
    examples=[
        "email my colleague that I will be late",
        "send a mail about the invoice",
        "write to my boss that the report is done",
    ],
)
def send_email(to: str, subject: str, body: str) -> dict:
    return {"sent": True, "to": to, "characters": len(body)}


@worker.tool(
    "Add an event to the calendar at a date and time.",
    effect="write",
    schema={
        "type": "object",
        "properties": {
            "title": {"type": "string", "minLength": 1},
            "when": {"type": "string", "minLength": 1},
        },
        "required": ["title", "when"],
    },
    examples=[
        "put the dentist appointment on Monday at 10 in my calendar",
        "schedule a meeting with Sara on Friday",
        "book lunch with Tom tomorrow at noon",
    ],
)
def calendar_add(title: str, when: str) -> dict:
    return {"added": True, "title": title, "when": when}


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # leaves run(): it says goodbye
    worker.run()
