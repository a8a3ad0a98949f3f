import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import NetworkAddress
import OS
import SystemPackage

/// Runs probes on fresh connections (`probe`) and opens the kept-alive one that `probe.reuse` rides
/// (`openKept`; ProbeSession chooses, by ConnectionReuse's rules, which a probe takes: a kept one
/// alone would hide a dead peer whose connection the kernel still holds). Every probe ends by its
/// timeout, whatever the peer does. Probes run on an event loop from start to finish, so a probe
/// costs no thread hop.
public final class Prober: Sendable {
    private let tlsContext: NIOSSLContext?
    public let spec: ProbeSpec

    /// Builds the TLS context once per pool: reading CA and key files per probe would be waste.
    public init(spec: ProbeSpec) throws {
        self.spec = spec
        self.tlsContext = spec.kind == .https ? try Self.makeTLSContext(spec.tls) : nil
    }

    /// Probes `backend` on `loop`; the future always succeeds, a failed probe is a result too.
    /// `timeout` replaces the spec's for this one probe (an early probe's shorter one).
    public func probe(_ backend: Endpoint, on loop: any EventLoop, timeout override: Duration? = nil) -> EventLoopFuture<ProbeResult> {
        let started = NIODeadline.now()
        let timeout = Self.timeAmount(override ?? spec.timeout)
        @Sendable func result(_ failure: ProbeFailure?, _ detail: String) -> ProbeResult {
            let elapsed = NIODeadline.now() - started
            return ProbeResult(failure: failure, duration: .nanoseconds(elapsed.nanoseconds), detail: detail)
        }
        let target = Endpoint(address: backend.address, port: spec.port ?? backend.port)
        let address: SocketAddress
        do { address = try SocketAddress(ipAddress: target.address.description, port: Int(target.port)) } catch {
            return loop.makeSucceededFuture(result(.unreachable, "\(error)"))
        }
        let bootstrap = ClientBootstrap(group: loop).connectTimeout(timeout)
        let outcome: EventLoopFuture<(ProbeFailure?, String)>
        if spec.kind == .tcp {
            // Close with an RST, as HAProxy's checks do: no FIN exchange, and no TIME_WAIT socket
            // left per probe (200 backends at 1 s would otherwise hold ~12,000 of them).
            outcome = bootstrap.connect(to: address).flatMap { channel in
                let abortive =
                    (channel as? any SocketOptionProvider)?.setSoLinger(linger(l_onoff: 1, l_linger: 0))
                    ?? channel.eventLoop.makeSucceededVoidFuture()
                return abortive.flatMap { channel.close() }.map { (nil, "connected") }.recover { _ in (nil, "connected") }
            }
        } else {
            outcome = exchange(with: target, at: address, bootstrap: bootstrap, deadline: started + timeout, on: loop)
        }
        return outcome.map { result($0.0, $0.1) }.recover { result(Self.classify($0), Self.describe($0)) }
    }

    static func timeAmount(_ duration: Duration) -> TimeAmount {
        .nanoseconds(Int64(duration.components.seconds) * 1_000_000_000 + duration.components.attoseconds / 1_000_000_000)
    }

    /// A connection for `probe.reuse`: TLS if https, HTTP/1.1 without `Connection: close`, and a
    /// handler that runs one request at a time on it (see ProbeSession).
    func openKept(_ backend: Endpoint, on loop: any EventLoop, deadline: NIODeadline) -> EventLoopFuture<NIOLoopBound<KeptConnection>> {
        let target = Endpoint(address: backend.address, port: spec.port ?? backend.port)
        let address: SocketAddress
        do { address = try SocketAddress(ipAddress: target.address.description, port: Int(target.port)) } catch {
            return loop.makeFailedFuture(error)
        }
        var headers = HTTPHeaders()
        headers.add(name: "Host", value: spec.tls.serverName ?? target.description)
        headers.add(name: "User-Agent", value: "conn-reaper")
        let request = HTTPRequestHead(version: .http1_1, method: .GET, uri: spec.path, headers: headers)
        let tlsContext = self.tlsContext
        let serverName = spec.tls.serverName
        let left = deadline - .now()
        return ClientBootstrap(group: loop).connectTimeout(max(left, .milliseconds(1))).channelInitializer { channel in
            channel.eventLoop.makeCompletedFuture {
                if let tlsContext {
                    try channel.pipeline.syncOperations.addHandler(NIOSSLClientHandler(context: tlsContext, serverHostname: serverName))
                }
                try channel.pipeline.syncOperations.addHTTPClientHandlers()
                try channel.pipeline.syncOperations.addHandler(KeptHTTPHandler())
            }
        }.connect(to: address).flatMapThrowing { channel in
            let handler = try channel.pipeline.syncOperations.handler(type: KeptHTTPHandler.self)
            return NIOLoopBound(KeptConnection(channel: channel, handler: handler, request: request), eventLoop: loop)
        }
    }

    /// The same probe, awaited: for one-off use and tests.
    public func probe(_ backend: Endpoint) async -> ProbeResult {
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        return (try? await probe(backend, on: loop).get())
            ?? ProbeResult(failure: .unreachable, duration: .zero, detail: "event loop gone")
    }

    private func exchange(
        with target: Endpoint, at address: SocketAddress, bootstrap: ClientBootstrap, deadline: NIODeadline,
        on loop: any EventLoop
    ) -> EventLoopFuture<(ProbeFailure?, String)> {
        let promise = loop.makePromise(of: (ProbeFailure?, String).self)
        var headers = HTTPHeaders()
        headers.add(name: "Host", value: spec.tls.serverName ?? target.description)
        headers.add(name: "User-Agent", value: "conn-reaper")
        headers.add(name: "Connection", value: "close")
        let request = HTTPRequestHead(version: .http1_1, method: .GET, uri: spec.path, headers: headers)
        let tlsContext = self.tlsContext
        let serverName = spec.tls.serverName
        let expected = spec.expectStatus
        bootstrap.channelInitializer { channel in
            channel.eventLoop.makeCompletedFuture {
                // The deadline covers TLS and the HTTP exchange too: a peer that accepts and then
                // says nothing must still fail the probe in time.
                channel.eventLoop.scheduleTask(deadline: deadline) { channel.close(promise: nil) }
                if let tlsContext {
                    try channel.pipeline.syncOperations.addHandler(
                        NIOSSLClientHandler(context: tlsContext, serverHostname: serverName))
                }
                try channel.pipeline.syncOperations.addHTTPClientHandlers()
                try channel.pipeline.syncOperations.addHandler(
                    HTTPProbeHandler(request: request, expected: expected, promise: promise))
            }
        }.connect(to: address).whenFailure { promise.fail($0) }
        return promise.futureResult
    }

    public static func makeTLSContext(_ tls: ProbeSpec.TLS) throws -> NIOSSLContext {
        var configuration = TLSConfiguration.makeClientConfiguration()
        if tls.insecureSkipVerify {
            configuration.certificateVerification = .none
        } else if let caFile = tls.caFile {
            configuration.trustRoots = .file(caFile)
        }
        if let certificateFile = tls.certificateFile {
            configuration.certificateChain = try NIOSSLCertificate.fromPEMFile(certificateFile).map { .certificate($0) }
        }
        if let keyFile = tls.keyFile {
            configuration.privateKey = .privateKey(try NIOSSLPrivateKey(file: keyFile, format: .pem))
        }
        return try NIOSSLContext(configuration: configuration)
    }

    /// A failure after the connection was up is `unhealthy`; before it, the errno tells refused
    /// from unreachable, and a connect that ran out of time is unreachable (no SYN-ACK came).
    static func classify(_ error: any Error) -> ProbeFailure {
        if error is AfterConnect { return .unhealthy }
        return ProbeFailure(connectErrno: connectErrno(error))
    }

    static func connectErrno(_ error: any Error) -> Int32? {
        switch error {
        case let error as NIOConnectionError:
            return (error.connectionErrors.first?.error as? IOError)?.errnoCode
        case let error as IOError:
            return error.errnoCode
        default:
            return nil
        }
    }

    static func describe(_ error: any Error) -> String {
        switch error {
        case let error as AfterConnect: return "after connect: \(describe(error.underlying))"
        case ChannelError.connectTimeout: return "connect timeout"
        case ChannelError.ioOnClosedChannel, ChannelError.alreadyClosed, ChannelError.eof: return "timeout or closed before a response"
        case let error as NIOConnectionError:
            guard let first = error.connectionErrors.first else { return "connect failed" }
            if let io = first.error as? IOError { return "connect: \(Self.describe(errno: io.errnoCode))" }
            return "connect: \(first.error)"
        case let error as IOError:
            return Self.describe(errno: error.errnoCode)
        default:
            return "\(error)"
        }
    }

    /// A failed connect in a probe's detail: what a peer did in words; a fault on this side (out of
    /// ports, descriptors, buffers or permission) with its errno's name, which is what to search for.
    static func describe(errno code: Int32) -> String {
        let errno = Errno(rawValue: code)
        let peer: String? =
            switch errno {
            case .connectionRefused: "connection refused"
            case .noRouteToHost: "no route to host"
            case .networkUnreachable: "network unreachable"
            case .connectionReset: "connection reset"
            case .timedOut: "timed out"
            default: nil
            }
        if let peer { return peer }
        let local: String? =
            switch errno {
            case .addressNotAvailable: "no local address or port left"
            case .tooManyOpenFiles: "too many open files"
            case .tooManyOpenFilesInSystem: "too many open files in the system"
            case .noBufferSpace: "no buffer space"
            case .notPermitted: "operation not permitted"
            case .permissionDenied: "permission denied"
            default: nil
            }
        guard let local else { return "errno \(code)" }
        return "\(local) (\(errno.symbolicName))"
    }
}

/// A probe error that came once the connection was up: the peer's stack answered.
struct AfterConnect: Error {
    let underlying: any Error
}

/// Sends one GET once the connection is up and completes the promise with the response status.
/// Failures it sees are wrapped in `AfterConnect`: it only exists on a connected channel.
final class HTTPProbeHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundOut = HTTPClientRequestPart

    private let request: HTTPRequestHead
    private let expected: Set<Int>
    private let promise: EventLoopPromise<(ProbeFailure?, String)>

    init(request: HTTPRequestHead, expected: Set<Int>, promise: EventLoopPromise<(ProbeFailure?, String)>) {
        self.request = request
        self.expected = expected
        self.promise = promise
    }

    func channelActive(context: ChannelHandlerContext) {
        context.write(wrapOutboundOut(.head(request)), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard case .head(let head) = unwrapInboundIn(data) else { return }
        let code = Int(head.status.code)
        promise.succeed((expected.contains(code) ? nil : .unhealthy, "HTTP \(code)"))
        context.close(promise: nil)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        promise.fail(AfterConnect(underlying: error))
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        // A no-op when the response already completed the promise.
        promise.fail(AfterConnect(underlying: ChannelError.eof))
        context.fireChannelInactive()
    }
}
