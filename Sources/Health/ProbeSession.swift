import NIOCore
import NIOHTTP1
import NIOPosix
import NetworkAddress

/// One backend's probes on one event loop. Without `probe.reuse` (and for tcp probes) each probe is
/// the prober's fresh one; with it, http/https probes ride a kept-alive connection by the rules of
/// ConnectionReuse. Everything but `probe` runs on the session's event loop.
public final class ProbeSession: Sendable {
    public let prober: Prober
    public let backend: Endpoint
    public let loop: any EventLoop
    private let state: NIOLoopBoundBox<State?>

    struct State {
        var reuse: ConnectionReuse
        var kept: KeptConnection?
        /// A probe is on the kept connection now: another one (an early probe) goes fresh beside it.
        var busy = false
        /// Closed for good: a connection a probe in flight still opens is not kept.
        var stopped = false
    }

    public init(prober: Prober, backend: Endpoint, loop: any EventLoop) {
        self.prober = prober
        self.backend = backend
        self.loop = loop
        self.state = .makeEmptyBox(valueType: State.self, eventLoop: loop)
    }

    var reuses: Bool { prober.spec.reuse && prober.spec.kind != .tcp }

    /// One probe; the future always succeeds, a failed probe is a result too.
    public func probe(timeout override: Duration? = nil) -> EventLoopFuture<ProbeResult> {
        guard reuses else { return prober.probe(backend, on: loop, timeout: override) }
        if loop.inEventLoop { return probeOnLoop(timeout: override) }
        return loop.flatSubmit { self.probeOnLoop(timeout: override) }
    }

    /// Closes the kept connection, if any (a new configuration, the agent stopping).
    public func close() {
        loop.execute {
            var current = self.state.value ?? State(reuse: ConnectionReuse(reconnectEvery: self.prober.spec.reconnectEvery))
            current.kept?.abort()
            current.kept = nil
            current.stopped = true
            self.state.value = current
        }
    }

    private func probeOnLoop(timeout override: Duration?) -> EventLoopFuture<ProbeResult> {
        var current = state.value ?? State(reuse: ConnectionReuse(reconnectEvery: prober.spec.reconnectEvery))
        guard !current.busy else { return prober.probe(backend, on: loop, timeout: override) }
        if let kept = current.kept, !kept.isActive {
            // The server ended the idle connection since the last probe.
            current.reuse.finished(on: .kept, .failed)
            current.kept = nil
        }
        current.busy = true
        state.value = current
        let started = NIODeadline.now()
        let deadline = started + Prober.timeAmount(override ?? prober.spec.timeout)
        let connection: ConnectionReuse.Connection = current.kept != nil && current.reuse.next == .kept ? .kept : .fresh
        if connection == .fresh, let stale = current.kept {
            stale.abort()
            state.value?.kept = nil
        }
        return attempt(connection, deadline: deadline).flatMap { outcome in
            if case .closedBeforeResponse = outcome,
                ConnectionReuse.retriesFresh(on: connection, closedBeforeResponse: true)
            {
                self.state.value?.reuse.finished(on: .kept, .failed)
                return self.attempt(.fresh, deadline: deadline).map { (ConnectionReuse.Connection.fresh, $0) }
            }
            return self.loop.makeSucceededFuture((connection, outcome))
        }.map { (connection, outcome) in
            self.finish(outcome, on: connection, started: started)
        }
    }

    /// One request on the kept connection, or on a fresh one opened for it (which then is kept).
    private func attempt(_ connection: ConnectionReuse.Connection, deadline: NIODeadline) -> EventLoopFuture<KeptOutcome> {
        if connection == .kept, let kept = state.value?.kept {
            return kept.request(deadline: deadline, judgeSilenceByTCP: true)
        }
        return prober.openKept(backend, on: loop, deadline: deadline).flatMap { kept in
            self.state.value?.kept = kept.value
            return kept.value.request(deadline: deadline, judgeSilenceByTCP: false)
        }.recover { .failed(Prober.classify($0), Prober.describe($0)) }
    }

    private func finish(_ outcome: KeptOutcome, on connection: ConnectionReuse.Connection, started: NIODeadline) -> ProbeResult {
        let failure: ProbeFailure?
        let detail: String
        var ending = ConnectionReuse.Ending.failed
        switch outcome {
        case .response(let status, let keepAlive):
            failure = prober.spec.expectStatus.contains(status) ? nil : .unhealthy
            detail = "HTTP \(status)"
            if failure == nil { ending = keepAlive ? .keptOpen : .closedByServer }
        case .closedBeforeResponse(let text):
            (failure, detail) = (.unhealthy, text)
        case .failed(let class_, let text):
            (failure, detail) = (class_, text)
        }
        state.value?.reuse.finished(on: connection, ending)
        state.value?.busy = false
        if ending != .keptOpen || state.value?.reuse.hasKeptConnection == false || state.value?.stopped == true {
            // After a failure the connection is never trusted again; after its last probe it is done.
            state.value?.kept?.abort()
            state.value?.kept = nil
        }
        let elapsed = NIODeadline.now() - started
        let on = connection == .kept ? " (kept connection)" : ""
        return ProbeResult(failure: failure, duration: .nanoseconds(elapsed.nanoseconds), detail: detail + on)
    }
}

/// How one request on a kept-capable connection ended.
enum KeptOutcome: Sendable {
    case response(status: Int, keepAlive: Bool)
    /// The connection closed or reset before any byte of a response (with what was seen, if anything).
    case closedBeforeResponse(String)
    case failed(ProbeFailure, String)
}

/// A connection that stays open between probes: its channel and the handler that runs one request
/// at a time on it. Used on its event loop only.
final class KeptConnection {
    let channel: any Channel
    let handler: KeptHTTPHandler
    let request: HTTPRequestHead

    init(channel: any Channel, handler: KeptHTTPHandler, request: HTTPRequestHead) {
        self.channel = channel
        self.handler = handler
        self.request = request
    }

    var isActive: Bool { channel.isActive && !handler.closed }

    /// Sends the request; by `deadline` the outcome is known. A request that got no response in
    /// time on a connection kept from an earlier probe is judged by what the kernel saw of it
    /// (ConnectionReuse.silenceFailure); on the connection just opened, a silence is unhealthy,
    /// as it always was after a fresh connect.
    func request(deadline: NIODeadline, judgeSilenceByTCP: Bool) -> EventLoopFuture<KeptOutcome> {
        let loop = channel.eventLoop
        let promise = loop.makePromise(of: KeptOutcome.self)
        let sent = NIODeadline.now()
        handler.pending = promise
        channel.write(HTTPClientRequestPart.head(request), promise: nil)
        channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
        let bound = NIOLoopBound(handler, eventLoop: loop)
        let timer = loop.scheduleTask(deadline: deadline) { [channel] in
            let handler = bound.value
            guard handler.pending != nil else { return }
            guard judgeSilenceByTCP, let provider = channel as? any SocketOptionProvider else {
                handler.complete(.failed(.unhealthy, "no response in time"))
                return
            }
            let waited = UInt32(clamping: (NIODeadline.now() - sent).nanoseconds / 1_000_000)
            provider.getTCPInfo().whenComplete { info in
                let handler = bound.value
                guard case .success(let info) = info else {
                    handler.complete(.failed(.unhealthy, "no response in time"))
                    return
                }
                let failure = ConnectionReuse.silenceFailure(
                    unacknowledgedSegments: info.tcpi_unacked, millisecondsSinceLastAck: info.tcpi_last_ack_recv,
                    millisecondsSinceRequest: waited)
                handler.complete(
                    .failed(failure, failure == .unhealthy ? "no response in time" : "no response in time, request unacknowledged"))
            }
        }
        promise.futureResult.whenComplete { _ in timer.cancel() }
        return promise.futureResult
    }

    /// Closes with an RST: nothing lingers, whatever state the peer is in.
    func abort() {
        handler.closed = true
        handler.complete(.closedBeforeResponse("closed by the prober"))
        let channel = self.channel
        let abortive =
            (channel as? any SocketOptionProvider)?.setSoLinger(linger(l_onoff: 1, l_linger: 0))
            ?? channel.eventLoop.makeSucceededVoidFuture()
        abortive.whenComplete { _ in channel.close(promise: nil) }
    }
}

/// Completes the pending request's promise with the response's status once the whole response
/// has come (so the next request starts on a clean connection), or with how the connection ended.
final class KeptHTTPHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundOut = HTTPClientRequestPart

    var pending: EventLoopPromise<KeptOutcome>?
    var closed = false
    private var head: HTTPResponseHead?

    func complete(_ outcome: KeptOutcome) {
        head = nil
        guard let promise = pending else { return }
        pending = nil
        promise.succeed(outcome)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head): self.head = head
        case .body: break
        case .end:
            guard let head else { return }
            complete(.response(status: Int(head.status.code), keepAlive: head.isKeepAlive))
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        let started = head != nil
        closed = true
        let text = "after connect: \(Prober.describe(error))"
        complete(started ? .failed(.unhealthy, text) : .closedBeforeResponse(text))
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        closed = true
        complete(head != nil ? .failed(.unhealthy, "closed during the response") : .closedBeforeResponse("closed before a response"))
        context.fireChannelInactive()
    }
}
