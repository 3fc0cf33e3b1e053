#!/usr/bin/env python3
"""Write examples/outage.jsonl, a synthetic 45-minute capture of contact-center traffic.

The file covers 2025-12-12 from 14:00:00Z to 14:45:00Z. Each line is one raw
payload in the shape that its platform delivers:

* Genesys Cloud CX conversation events, about 90% in the Amazon EventBridge
  envelope and 10% as Notification API messages (topicName, version,
  eventBody, metadata):
  - customer.end for voice calls, about 40 a minute. Outside the outage every
    call completes (disconnectType ENDPOINT, CLIENT or PEER).
  - From 14:20:00 to 14:34:00 the SIP trunk fails: about 70% of calls end with
    disconnectType ERROR or TRANSPORT_FAILURE, and callers retry, so volume
    rises by about 10%.
  - user.end for the agent leg of about 10% of completed calls (12 agents,
    2 queues), and customer.start for web chats at about one a minute.
* NICE CXone Reporting API skill summaries, one poll a minute, wrapped in a
  capture record because the response carries no time of its own. Every value
  is a string, as the API returns it. "Billing Voice" misses its 80% service
  level goal (40-55%) for the intervals from 14:22 to 14:38 and is at 85-98%
  otherwise. "Sales Operations Email" stays at 100%.
* Synthetic checks of the CRM behind the contact center: a Pingdom webhook for
  "CRM Salesforce login" going DOWN at 14:36:00 and UP at 14:41:00, and a
  Datadog Synthetics webhook for "CRM Dynamics API", Triggered at 14:36:30 and
  Recovered at 14:41:30.
* Five malformed lines that the pipeline must reject with a reason: invalid
  JSON (a truncated envelope), an object of unknown shape, a customer.end
  without eventTime, a customer.end whose eventTime is "yesterday", and a JSON
  array.

Lines are in delivery order. Each Genesys event is delivered 0.1-1 s after
its eventTime, and about 1% of them 3-20 s late, so event times are mildly
out of order. NICE polls arrive 2 s after their interval ends. Phone numbers are fictional (+1 317 555 0100 to 0199), ids are random
UUIDs, and IP addresses are from the documentation ranges. The random seed is
fixed, so every run writes the same bytes.

Usage: scripts/make_example.py [--output PATH]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import uuid
from datetime import datetime, timezone
from pathlib import Path

SEED = 20251212

# 2025-12-12T14:00:00Z and the end of the capture, in epoch milliseconds.
START_MS = 1765548000000
END_MS = START_MS + 45 * 60_000
MINUTE_MS = 60_000

OUTAGE_START_MS = START_MS + 20 * MINUTE_MS
OUTAGE_END_MS = START_MS + 34 * MINUTE_MS
OUTAGE_FAILURE_SHARE = 0.70
# Failed callers dial again, so the outage brings about 10% more calls.
OUTAGE_RATE_FACTOR = 1.10

# The NICE service-level drop: poll intervals that start in [14:22, 14:38).
SERVICE_LEVEL_DROP_START_MS = START_MS + 22 * MINUTE_MS
SERVICE_LEVEL_DROP_END_MS = START_MS + 38 * MINUTE_MS

CALLS_PER_MINUTE = 40
CHATS_PER_MINUTE = 1
USER_END_SHARE = 0.10
NOTIFICATION_API_SHARE = 0.10
LATE_EVENT_SHARE = 0.01

GENESYS_SOURCE = "aws.partner/genesys.com/cloud/b459992c-bfd5-5a47-9a1c-f0a9bde55e3c/genesys_acme"
AWS_ACCOUNT = "123456789012"
DNIS = "tel:+13175550000"
DIVISION_ID = "5424350d-f4ad-5c8e-810c-78fe6820d58f"

PINGDOM_DOWN_MS = START_MS + 36 * MINUTE_MS
PINGDOM_UP_MS = START_MS + 41 * MINUTE_MS
DATADOG_TRIGGERED_MS = PINGDOM_DOWN_MS + 30_000
DATADOG_RECOVERED_MS = PINGDOM_UP_MS + 30_000


def new_uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def iso_millis(epoch_ms: int) -> str:
    """Format epoch milliseconds as ISO 8601 UTC with milliseconds, e.g. 2025-12-12T14:00:00.123Z."""
    moment = datetime.fromtimestamp(epoch_ms / 1000, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{epoch_ms % 1000:03d}Z"


def iso_seconds(epoch_ms: int) -> str:
    """Format epoch milliseconds as ISO 8601 UTC truncated to seconds, e.g. 2025-12-12T14:00:00Z."""
    moment = datetime.fromtimestamp(epoch_ms // 1000, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class Population:
    """Callers, agents and queues that the events draw from, so ids repeat like real traffic."""

    def __init__(self, rng: random.Random):
        # One external contact per fictional caller number.
        self.callers = [
            (f"tel:+131755501{suffix:02d}", new_uuid(rng)) for suffix in range(100)
        ]
        self.agents = [new_uuid(rng) for _ in range(12)]
        self.queues = [new_uuid(rng) for _ in range(2)]
        self.chat_organizations = [new_uuid(rng) for _ in range(5)]


class Capture:
    """Lines of the output with the time at which each was delivered."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.records: list[tuple[int, int, dict | list | str]] = []

    def delivery_time(self, event_ms: int) -> int:
        latency_ms = self.rng.randint(100, 1000)
        if self.rng.random() < LATE_EVENT_SHARE:
            latency_ms += self.rng.randint(3_000, 20_000)
        return event_ms + latency_ms

    def add(self, delivered_ms: int, payload: dict | list | str) -> None:
        # The sequence number keeps the order stable for equal delivery times.
        self.records.append((delivered_ms, len(self.records), payload))

    def ordered_payloads(self) -> list[dict | list | str]:
        return [payload for _, _, payload in sorted(self.records)]


def genesys_message(
    rng: random.Random,
    capture: Capture,
    event_name: str,
    event_body: dict,
) -> None:
    """Add a Genesys conversation event, in the EventBridge envelope or as a Notification API message."""
    conversation_id = event_body["conversationId"]
    topic_name = f"v2.detail.events.conversation.{conversation_id}.{event_name}"
    metadata = {"CorrelationId": new_uuid(rng)}
    delivered_ms = capture.delivery_time(event_body["eventTime"])

    if rng.random() < NOTIFICATION_API_SHARE:
        payload = {
            "topicName": topic_name,
            "version": "2",
            "eventBody": event_body,
            "metadata": metadata,
        }
    else:
        payload = genesys_envelope(rng, event_name, topic_name, event_body, metadata, delivered_ms)
    capture.add(delivered_ms, payload)


def genesys_envelope(
    rng: random.Random,
    event_name: str,
    topic_name: str,
    event_body: dict,
    metadata: dict,
    delivered_ms: int,
) -> dict:
    """Build the EventBridge envelope that the Genesys Cloud integration puts around an event."""
    return {
        "version": "0",
        "id": new_uuid(rng),
        "detail-type": f"v2.detail.events.conversation.{{id}}.{event_name}",
        "source": GENESYS_SOURCE,
        "account": AWS_ACCOUNT,
        "time": iso_seconds(delivered_ms),
        "region": "us-east-1",
        "resources": [],
        "detail": {
            "topicName": topic_name,
            "version": "2",
            "eventBody": event_body,
            "metadata": metadata,
            "timestamp": iso_millis(delivered_ms),
        },
    }


def call_arrival_times(rng: random.Random) -> list[int]:
    """Draw call end times as a Poisson process at CALLS_PER_MINUTE, raised during the outage."""
    times = []
    moment_ms = float(START_MS)
    while True:
        in_outage = OUTAGE_START_MS <= moment_ms < OUTAGE_END_MS
        rate_per_ms = CALLS_PER_MINUTE / MINUTE_MS * (OUTAGE_RATE_FACTOR if in_outage else 1.0)
        moment_ms += rng.expovariate(rate_per_ms)
        if moment_ms >= END_MS:
            return times
        times.append(int(moment_ms))


def completed_call_duration_ms(rng: random.Random) -> int:
    # Log-normal with a median of about 4 minutes, clamped to 20 s - 30 min.
    seconds = math.exp(rng.gauss(math.log(240), 0.55))
    return int(min(max(seconds, 20), 1800) * 1000) + rng.randint(0, 999)


def failed_call_duration_ms(rng: random.Random) -> int:
    # Half the failed calls never connect, and the rest drop within 90 s.
    if rng.random() < 0.5:
        return 0
    return rng.randint(1_000, 90_000)


def customer_end_body(
    rng: random.Random,
    conversation_id: str,
    event_ms: int,
    disconnect_type: str,
    caller: tuple[str, str],
    interacting_ms: int,
) -> dict:
    ani, external_contact_id = caller
    return {
        "eventTime": event_ms,
        "conversationId": conversation_id,
        "participantId": new_uuid(rng),
        "sessionId": new_uuid(rng),
        "disconnectType": disconnect_type,
        "mediaType": "VOICE",
        "externalContactId": external_contact_id,
        "provider": "Edge",
        "direction": "INBOUND",
        "ani": ani,
        "dnis": DNIS,
        "interactingDurationMs": interacting_ms,
        "conversationExternalContactIds": [external_contact_id],
    }


def add_voice_calls(rng: random.Random, capture: Capture, population: Population) -> None:
    for event_ms in call_arrival_times(rng):
        conversation_id = new_uuid(rng)
        caller = rng.choice(population.callers)
        in_outage = OUTAGE_START_MS <= event_ms < OUTAGE_END_MS

        if in_outage and rng.random() < OUTAGE_FAILURE_SHARE:
            disconnect_type = rng.choices(["TRANSPORT_FAILURE", "ERROR"], weights=[6, 4])[0]
            body = customer_end_body(
                rng, conversation_id, event_ms, disconnect_type, caller, failed_call_duration_ms(rng)
            )
            genesys_message(rng, capture, "customer.end", body)
            continue

        # ENDPOINT: the caller's phone hung up. PEER: the other party (the agent)
        # hung up. CLIENT: a client application disconnected the call.
        disconnect_type = rng.choices(["ENDPOINT", "PEER", "CLIENT"], weights=[55, 35, 10])[0]
        interacting_ms = completed_call_duration_ms(rng)
        body = customer_end_body(rng, conversation_id, event_ms, disconnect_type, caller, interacting_ms)
        genesys_message(rng, capture, "customer.end", body)

        if rng.random() < USER_END_SHARE:
            add_agent_leg_end(rng, capture, population, body)


def add_agent_leg_end(rng: random.Random, capture: Capture, population: Population, customer_body: dict) -> None:
    """Add the user.end of the agent who took a completed call, within 1.5 s of the customer's end."""
    event_ms = customer_body["eventTime"] + rng.randint(-1_500, 1_500)
    # The agent's leg ends with PEER when the customer hung up, and with CLIENT
    # when the agent did.
    disconnect_type = "PEER" if customer_body["disconnectType"] == "ENDPOINT" else "CLIENT"
    held_ms = rng.randint(10_000, 120_000) if rng.random() < 0.2 else 0
    queue_and_ivr_ms = rng.randint(15_000, 60_000)
    interacting_ms = max(customer_body["interactingDurationMs"] - queue_and_ivr_ms - held_ms, 5_000)
    body = {
        "eventTime": event_ms,
        "conversationId": customer_body["conversationId"],
        "participantId": new_uuid(rng),
        "sessionId": new_uuid(rng),
        "disconnectType": disconnect_type,
        "mediaType": "VOICE",
        "provider": "Edge",
        "direction": "INBOUND",
        "ani": customer_body["ani"],
        "dnis": customer_body["dnis"],
        "userId": rng.choice(population.agents),
        "divisionId": DIVISION_ID,
        "queueId": rng.choice(population.queues),
        "interactingDurationMs": interacting_ms,
        "heldDurationMs": held_ms,
        "alertingDurationMs": rng.randint(800, 9_000),
        "contactingDurationMs": 0,
        "dialingDurationMs": 0,
        "callbackDurationMs": 0,
        "conversationExternalContactIds": customer_body["conversationExternalContactIds"],
    }
    genesys_message(rng, capture, "user.end", body)


def add_chat_starts(rng: random.Random, capture: Capture, population: Population) -> None:
    moment_ms = float(START_MS)
    while True:
        moment_ms += rng.expovariate(CHATS_PER_MINUTE / MINUTE_MS)
        if moment_ms >= END_MS:
            return
        external_contact_id = new_uuid(rng)
        body = {
            "eventTime": int(moment_ms),
            "conversationId": new_uuid(rng),
            "participantId": new_uuid(rng),
            "sessionId": new_uuid(rng),
            "mediaType": "CHAT",
            "provider": "PureCloud Webchat v2",
            "direction": "INBOUND",
            "externalContactId": external_contact_id,
            "externalOrganizationId": rng.choice(population.chat_organizations),
            "conversationExternalContactIds": [external_contact_id],
        }
        genesys_message(rng, capture, "customer.start", body)


def sla_counts(rng: random.Random, answered: int, low: int, high: int) -> tuple[int, int, int]:
    """Split answered contacts into within and out of SLA so that the rounded service level is in [low, high]."""
    while True:
        target = rng.uniform(low, high)
        within = round(answered * target / 100)
        service_level = round(100 * within / answered)
        if low <= service_level <= high:
            return within, answered - within, service_level


def billing_voice_summary(rng: random.Random, degraded: bool) -> dict:
    """Build the one-minute skill summary of the inbound "Billing Voice" skill, every value a string."""
    logged_in = 24
    if degraded:
        offered = rng.randint(30, 38)
        abandoned = rng.randint(3, 8)
        available = rng.randint(0, 1)
        working = rng.randint(19, 21)
        after_call_work = rng.randint(1, 2)
        queued = rng.randint(8, 20)
        speed_to_answer = rng.randint(60, 140)
        longest_queue = rng.randint(120, 400)
        handle_time = rng.randint(330, 420)
        low, high = 40, 55
    else:
        offered = rng.randint(22, 30)
        abandoned = rng.randint(0, 1)
        available = rng.randint(4, 7)
        working = rng.randint(13, 16)
        after_call_work = rng.randint(1, 3)
        queued = rng.randint(0, 2)
        speed_to_answer = rng.randint(6, 18)
        longest_queue = rng.randint(15, 40)
        handle_time = rng.randint(280, 340)
        low, high = 85, 98

    handled = offered - abandoned
    within, out_of_sla, service_level = sla_counts(rng, handled, low, high)
    wrap_time = rng.randint(25, 40)
    unavailable = max(logged_in - available - working - after_call_work, 0)
    return {
        "businessUnitId": "318204",
        "businessUnitName": "BUSSINESSNAME",
        "abandonCount": str(abandoned),
        "abandonRate": str(round(100 * abandoned / offered)),
        "agentsAcw": str(after_call_work),
        "agentsAvailable": str(available),
        "agentsIdle": str(available),
        "agentsLoggedIn": str(logged_in),
        "agentsUnavailable": str(unavailable),
        "agentsWorking": str(working),
        "averageHandleTime": str(handle_time),
        "averageInqueueTime": str(speed_to_answer + rng.randint(0, 5)),
        "averageSpeedToAnswer": str(speed_to_answer),
        "averageTalkTime": str(handle_time - wrap_time),
        "averageWrapTime": str(wrap_time),
        "campaignId": "2611851",
        "campaignName": "Billing",
        "contactsActive": str(working + queued),
        "contactsHandled": str(handled),
        "contactsOffered": str(offered),
        "contactsQueued": str(queued),
        "contactsOutOfSLA": str(out_of_sla),
        "contactsWithinSLA": str(within),
        "holdTime": str(rng.randint(0, 240)),
        "isOutbound": "False",
        "longestQueueDur": str(longest_queue),
        "mediaTypeId": "4",
        "mediaTypeName": "Phone Call",
        "queueCount": str(queued),
        "serviceLevel": str(service_level),
        "skillName": "Billing Voice",
        "skillId": "4400101",
        "serviceLevelGoal": "80",
        "serviceLevelThreshold": "30",
        "totalContactTime": str(handled * handle_time),
        "dials": "0",
        "connects": "0",
        "connectsAHT": "0.00",
        "rightPartyConnects": "0",
        "rightPartyConnectsAHT": "0.00",
    }


def sales_email_summary(rng: random.Random) -> dict:
    """Build the one-minute skill summary of "Sales Operations Email", which stays healthy."""
    handled = rng.randint(0, 3)
    working = rng.randint(1, 2)
    return {
        "businessUnitId": "318204",
        "businessUnitName": "BUSSINESSNAME",
        "abandonCount": "0",
        "abandonRate": "0",
        "agentsAcw": str(2 - working),
        "agentsAvailable": "0",
        "agentsIdle": "0",
        "agentsLoggedIn": "2",
        "agentsUnavailable": "0",
        "agentsWorking": str(working),
        "averageHandleTime": str(rng.randint(160, 200)),
        "averageInqueueTime": str(rng.randint(1800, 2100)),
        "averageSpeedToAnswer": str(rng.randint(1800, 2100)),
        "averageTalkTime": str(rng.randint(160, 200)),
        "averageWrapTime": "0",
        "campaignId": "2611849",
        "campaignName": "Sales Operations",
        "contactsActive": str(working),
        "contactsHandled": str(handled),
        "contactsOffered": str(handled),
        "contactsQueued": str(handled),
        "contactsOutOfSLA": "0",
        "contactsWithinSLA": str(handled),
        "holdTime": "0",
        "isOutbound": "False",
        "longestQueueDur": "0",
        "mediaTypeId": "1",
        "mediaTypeName": "E-Mail",
        "queueCount": "0",
        "serviceLevel": "100",
        "skillName": "Sales Operations Email",
        "skillId": "10592301",
        "serviceLevelGoal": "70",
        "serviceLevelThreshold": "28800",
        "totalContactTime": str(handled * rng.randint(160, 200)),
        "dials": "0",
        "connects": str(handled),
        "connectsAHT": "0.19",
        "rightPartyConnects": "0",
        "rightPartyConnectsAHT": "0.00",
    }


def add_nice_polls(rng: random.Random, capture: Capture) -> None:
    for interval_start_ms in range(START_MS, END_MS, MINUTE_MS):
        interval_end_ms = interval_start_ms + MINUTE_MS
        received_ms = interval_end_ms + 2_000
        degraded = SERVICE_LEVEL_DROP_START_MS <= interval_start_ms < SERVICE_LEVEL_DROP_END_MS
        payload = {
            "capture": {
                "delivery": "nice_reporting_poll",
                "received_at": iso_seconds(received_ms),
                "interval_start": iso_seconds(interval_start_ms),
                "interval_end": iso_seconds(interval_end_ms),
            },
            "payload": {
                "skillSummaries": [billing_voice_summary(rng, degraded), sales_email_summary(rng)],
            },
        }
        capture.add(received_ms, payload)


def pingdom_webhook(check_id: int, previous: str, current: str, changed_ms: int) -> dict:
    if current == "DOWN":
        description = "Timeout (> 30s)"
        long_description = "Timeout (> 30s) while loading https://crm.example.com/login"
    else:
        description = "OK"
        long_description = "OK"
    changed_seconds = changed_ms // 1000
    return {
        "check_id": check_id,
        "check_name": "CRM Salesforce login",
        "check_type": "HTTP",
        "check_params": {
            "basic_auth": False,
            "encryption": True,
            "full_url": "https://crm.example.com/login",
            "header": "User-Agent:Pingdom.com_bot",
            "hostname": "crm.example.com",
            "ipv6": False,
            "port": 443,
            "url": "/login",
        },
        "tags": ["crm", "contact-center"],
        "previous_state": previous,
        "current_state": current,
        "importance_level": "HIGH",
        "state_changed_timestamp": changed_seconds,
        # Pingdom sends this time without a zone designator, and it is UTC.
        "state_changed_utc_time": datetime.fromtimestamp(changed_seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"),
        "long_description": long_description,
        "description": description,
        "first_probe": {
            "ip": "203.0.113.17",
            "ipv6": "2001:db8:1020:209::5",
            "location": "Chicago, IL",
        },
        "second_probe": {
            "ip": "203.0.113.44",
            "ipv6": "2001:db8:1020:210::5",
            "location": "Dallas 4, TX",
            "version": 1,
        },
    }


def datadog_webhook(rng: random.Random, aggregation_key: str, transition: str, event_ms: int) -> dict:
    event_id = str(rng.randint(10**18, 10**19 - 1))
    # Datadog renders both times as epoch milliseconds in strings.
    epoch_ms = str(event_ms)
    return {
        "id": event_id,
        "last_updated": epoch_ms,
        "event_type": "synthetics_alert",
        "title": f"[P2] [{transition}] [Synthetics] CRM Dynamics API",
        "date": epoch_ms,
        "org": {"id": "1200457", "name": "rs-1100042"},
        "body": "%%%\nAn alert has been received for crm-api.example.com\n\n@webhook-blameless\n%%%",
        "alert": {
            "alert_id": "166187455",
            "alert_metric": "",
            "alert_query": "",
            "alert_status": "",
            "alert_scope": "",
            "alert_transition": transition,
            "alert_type": "error" if transition == "Triggered" else "success",
            "alert_metric_namespace": "",
        },
        "incident": {
            "incident_public_id": "null",
            "incident_severity": "null",
            "incident_status": "null",
            "incident_url": "null",
            "incident_uuid": "null",
            "incident_title": "",
            "incident_message": "%%%\nAn alert has been received\n%%%",
            "incident_integrations": None,
            "incident_fields": None,
        },
        "event": {
            "aggreg_key": aggregation_key,
            "event_id": "ID",
            "event_url": f"https://app.datadoghq.com/event/event?id={event_id}",
        },
    }


def add_synthetic_checks(rng: random.Random, capture: Capture) -> None:
    check_id = 8412093
    capture.add(PINGDOM_DOWN_MS + 1_200, pingdom_webhook(check_id, "UP", "DOWN", PINGDOM_DOWN_MS))
    capture.add(PINGDOM_UP_MS + 1_100, pingdom_webhook(check_id, "DOWN", "UP", PINGDOM_UP_MS))

    aggregation_key = f"{rng.getrandbits(128):032x}"
    capture.add(DATADOG_TRIGGERED_MS + 900, datadog_webhook(rng, aggregation_key, "Triggered", DATADOG_TRIGGERED_MS))
    capture.add(DATADOG_RECOVERED_MS + 800, datadog_webhook(rng, aggregation_key, "Recovered", DATADOG_RECOVERED_MS))


def malformed_lines(rng: random.Random, population: Population) -> list[str]:
    """Build the five lines that the pipeline must reject, already serialized."""
    lines = []

    # 1. Invalid JSON: an EventBridge envelope cut off partway through.
    event_ms = START_MS + 7 * MINUTE_MS + 12_345
    conversation_id = new_uuid(rng)
    body = customer_end_body(
        rng, conversation_id, event_ms, "ENDPOINT", rng.choice(population.callers), completed_call_duration_ms(rng)
    )
    envelope = genesys_envelope(
        rng,
        "customer.end",
        f"v2.detail.events.conversation.{conversation_id}.customer.end",
        body,
        {"CorrelationId": new_uuid(rng)},
        event_ms + 400,
    )
    full = serialize(envelope)
    lines.append(full[: len(full) * 3 // 5])

    # 2. A JSON object that matches no known source.
    lines.append(serialize({"hello": "world"}))

    # 3. and 4. A customer.end without eventTime, and one whose eventTime is a word.
    for event_time in (None, "yesterday"):
        conversation_id = new_uuid(rng)
        body = customer_end_body(
            rng, conversation_id, 0, "ENDPOINT", rng.choice(population.callers), completed_call_duration_ms(rng)
        )
        if event_time is None:
            del body["eventTime"]
        else:
            body["eventTime"] = event_time
        delivered_ms = START_MS + rng.randint(10, 40) * MINUTE_MS
        envelope = genesys_envelope(
            rng,
            "customer.end",
            f"v2.detail.events.conversation.{conversation_id}.customer.end",
            body,
            {"CorrelationId": new_uuid(rng)},
            delivered_ms,
        )
        lines.append(serialize(envelope))

    # 5. A JSON array: a batch of Notification API messages in one line.
    conversation_id = new_uuid(rng)
    body = customer_end_body(
        rng,
        conversation_id,
        START_MS + 38 * MINUTE_MS + 4_321,
        "PEER",
        rng.choice(population.callers),
        completed_call_duration_ms(rng),
    )
    message = {
        "topicName": f"v2.detail.events.conversation.{conversation_id}.customer.end",
        "version": "2",
        "eventBody": body,
        "metadata": {"CorrelationId": new_uuid(rng)},
    }
    lines.append(serialize([message]))
    return lines


def serialize(payload) -> str:
    return json.dumps(payload, separators=(",", ":"))


def build_lines() -> list[str]:
    rng = random.Random(SEED)
    population = Population(rng)
    capture = Capture(rng)

    add_voice_calls(rng, capture, population)
    add_chat_starts(rng, capture, population)
    add_nice_polls(rng, capture)
    add_synthetic_checks(rng, capture)
    lines = [serialize(payload) for payload in capture.ordered_payloads()]

    # Spread the malformed lines through the file, at 10%, 30%, ... 90%. They
    # are inserted from the back so that earlier positions do not shift.
    bad_lines = malformed_lines(rng, population)
    positions = [len(lines) * (2 * index + 1) // 10 for index in range(len(bad_lines))]
    for position, bad_line in sorted(zip(positions, bad_lines), reverse=True):
        lines.insert(position, bad_line)
    return lines


def main() -> None:
    repo_root = Path(__file__).resolve().parent.parent
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--output",
        type=Path,
        default=repo_root / "examples" / "outage.jsonl",
        help="file to write (default: examples/outage.jsonl in the repository)",
    )
    arguments = parser.parse_args()

    lines = build_lines()
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    with arguments.output.open("w", encoding="utf-8", newline="\n") as output:
        for line in lines:
            output.write(line)
            output.write("\n")
    print(f"Wrote {len(lines)} lines ({arguments.output.stat().st_size} bytes) to {arguments.output}.")


if __name__ == "__main__":
    main()
