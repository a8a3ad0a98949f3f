import Testing

@testable import Health

@Suite struct ProbeEngineTests {
    /// What the peer did in words; a fault on this side with its errno's name (OS's one table).
    @Test func aFailedConnectIsDescribedForAnOperator() {
        #expect(Prober.describe(errno: 111) == "connection refused")
        #expect(Prober.describe(errno: 99) == "no local address or port left (EADDRNOTAVAIL)")
        #expect(Prober.describe(errno: 24) == "too many open files (EMFILE)")
        #expect(Prober.describe(errno: 1) == "operation not permitted (EPERM)")
        #expect(Prober.describe(errno: 71) == "errno 71")
    }

    @Test func theStatusLineIsReadOnceWhole() {
        #expect(HTTPStatusLine.status(in: Array("HTTP/1.1 200 OK\r\n".utf8)) == .some(200))
        #expect(HTTPStatusLine.status(in: Array("HTTP/1.0 503 Service Unavailable\r\n".utf8)) == .some(503))
        // Not whole yet: wait for more.
        #expect(HTTPStatusLine.status(in: Array("HTTP/1.1 20".utf8)) == nil)
        #expect(HTTPStatusLine.status(in: Array("HT".utf8)) == nil)
        #expect(HTTPStatusLine.status(in: []) == nil)
        // Whatever else answered: not HTTP, an unhealthy answer.
        #expect(HTTPStatusLine.status(in: Array("SSH-2.0-OpenSSH_9.2\r\n".utf8)) == .some(nil))
        #expect(HTTPStatusLine.status(in: Array("HTTP/1.1 2x0 OK\r\n".utf8)) == .some(nil))
        #expect(HTTPStatusLine.status(in: Array("HTTP/2 200\r\n".utf8)) == .some(nil))
    }

    @Test func theHTTPCheckSendsTheNIOProbersRequest() {
        let spec = ProbeSpec(kind: .http, path: "/readyz", expectStatus: [200, 204])
        guard case .http(let request, let expect) = TCPProbeEngine.Check.http(spec, target: .init(address: .v4(0x0A00_0001), port: 8080))
        else {
            Issue.record("not an http check")
            return
        }
        #expect(
            String(decoding: request, as: UTF8.self)
                == "GET /readyz HTTP/1.1\r\nHost: 10.0.0.1:8080\r\nUser-Agent: conn-reaper\r\nConnection: close\r\n\r\n")
        #expect(expect == [200, 204])
    }

    @Test func timersComeOutInDeadlineOrder() {
        var heap = TimerHeap<Int>()
        let start = ContinuousClock.now
        let offsets = [5, 1, 9, 3, 3, 7, 0, 2, 8, 6, 4]
        for (index, offset) in offsets.enumerated() { heap.push(start + .milliseconds(offset), index) }
        #expect(heap.popDue(at: start - .milliseconds(1)) == nil)
        var popped: [Duration] = []
        while let (due, _) = heap.popDue(at: start + .seconds(1)) { popped.append(due - start) }
        #expect(popped == offsets.sorted().map { .milliseconds($0) })
        #expect(heap.nextDue == nil)
    }
}
