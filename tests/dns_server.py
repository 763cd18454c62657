"""A DNS server on loopback for tests: answers A and AAAA queries from a table the test changes at will."""

from __future__ import annotations

import ipaddress
import socket
import threading

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

from store.embedded import free_port


class DnsServer:
    """Answers over UDP on 127.0.0.1 from `answers` (name -> addresses); other names get NXDOMAIN.

    `nameserver` is what EGRESS_NAMESERVER takes. `queries` counts the questions per name.
    """

    def __init__(self) -> None:
        self.answers: dict[str, list[str]] = {}
        self.queries: dict[str, int] = {}
        self.port = free_port()
        self.nameserver = f"127.0.0.1:{self.port}"
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", self.port))
        self._stopped = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        self._sock.settimeout(0.2)
        while not self._stopped.is_set():
            try:
                wire, peer = self._sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            query = dns.message.from_wire(wire)
            response = dns.message.make_response(query)
            question = query.question[0]
            name = question.name.to_text(omit_final_dot=True)
            self.queries[name] = self.queries.get(name, 0) + 1
            addresses = self.answers.get(name)
            if addresses is None:
                response.set_rcode(dns.rcode.NXDOMAIN)
            else:
                version = 4 if question.rdtype == dns.rdatatype.A else 6
                matching = [a for a in addresses if ipaddress.ip_address(a).version == version]
                if matching:
                    kind = "A" if version == 4 else "AAAA"
                    response.answer.append(dns.rrset.from_text(question.name, 0, "IN", kind, *matching))
            self._sock.sendto(response.to_wire(), peer)

    def stop(self) -> None:
        self._stopped.set()
        self._sock.close()
