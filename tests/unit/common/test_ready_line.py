"""The readiness line: what every server prints and every launcher parses."""

from services.common.ready_line import format_ready_line, parse_ready_line


def test_a_formatted_line_parses_back():
    line = format_ready_line("worker", "127.0.0.1:8001", "0.0.0.0:9001") + "\n"
    announced = parse_ready_line(line)
    assert announced is not None
    assert (announced.service, announced.address, announced.metrics) == ("worker", "127.0.0.1:8001", "0.0.0.0:9001")
    assert announced.port == 8001 and announced.metrics_port == 9001


def test_other_lines_are_not_announcements():
    assert parse_ready_line("# worker process 0 pid 12 address 127.0.0.1:1 metrics 127.0.0.1:2") is None
    assert parse_ready_line("shunter worker listening on 127.0.0.1:x metrics 127.0.0.1:2") is None
    assert parse_ready_line("") is None

