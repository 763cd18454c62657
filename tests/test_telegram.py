"""The Bot API client's pure parts: splitting long replies, reading updates."""

from __future__ import annotations

from actors.channels import telegram


def test_split_counts_utf16_code_units() -> None:
    assert telegram.split("") == []
    assert [len(c) for c in telegram.split("a" * 4097)] == [4096, 1]
    emoji = "\U0001f600"  # two UTF-16 code units
    chunks = telegram.split(emoji * 2049)
    assert [len(c) for c in chunks] == [2048, 1] and "".join(chunks) == emoji * 2049
    mixed = telegram.split("a" + emoji * 2048)  # 4097 units: the last emoji moves on whole
    assert [len(c) for c in mixed] == [2048, 1]


def test_message_of_reads_text_messages_only() -> None:
    message = {"message_id": 7, "chat": {"id": -100123, "type": "group"}, "from": {"id": 5, "username": "ann"}}
    assert telegram.message_of({"update_id": 1, "message": {**message, "text": "hi"}}) == telegram.Inbound(
        "-100123", "7", "hi", "ann"
    )
    assert telegram.message_of({"update_id": 2, "message": message}) is None  # a photo, a join...
    assert telegram.message_of({"update_id": 3, "edited_message": {**message, "text": "hi"}}) is None
    assert telegram.message_of({"update_id": 4, "message": {**message, "text": "x", "chat": {"id": "x"}}}) is None
