import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import NetworkAddress

/// Runs probes, each on a fresh connection: a pooled keep-alive connection would hide a dead peer,
/// which is the very failure conn-reaper exists for. Every probe ends by its timeout, whatever the peer does.
public final class Prober: Sendable {
    private let group: any EventLoopGroup
    private let tlsContext: NIOSSLContext?
    public let spec: ProbeSpec

    /// Builds the TLS context once per pool: reading CA and key files per probe would be waste.
    public init(spec: ProbeSpec, group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton) throws {
        self.spec = spec
        self.group = group
        self.tlsContext = spec.kind == .https ? try Self.makeTLSContext(spec.tls) : nil
    }

    public func probe(_ backend: Endpoint) async -> ProbeResult {
        let clock = ContinuousClock()
        let started = clock.now
        let target = Endpoint(address: backend.address, port: spec.port ?? backend.port)
        do {
            let detail = try await exchange(with: target)
            let elapsed = clock.now - started
            return ProbeResult(success: detail.success, duration: elapsed, detail: detail.text)
        } catch {
            return ProbeResult(success: false, duration: clock.now - started, detail: Self.describe(error))
        }
    }

    private func exchange(with target: Endpoint) async throws -> (success: Bool, text: String) {
        let address = try SocketAddress(ipAddress: target.address.description, port: Int(target.port))
        let timeout = TimeAmount.nanoseconds(Int64(spec.timeout.components.seconds) * 1_000_000_000
            + spec.timeout.components.attoseconds / 1_000_000_000)
        let deadline = NIODeadline.now() + timeout
        let bootstrap = ClientBootstrap(group: group).connectTimeout(timeout)
        if spec.kind == .tcp {
            let channel = try await bootstrap.connect(to: address).get()
            try? await channel.close()
            return (true, "connected")
        }
        let tlsContext = self.tlsContext
        let serverName = spec.tls.serverName
        let channel = try await bootstrap.connect(to: address) { channel in
            channel.eventLoop.makeCompletedFuture {
                // The deadline covers TLS and the HTTP exchange too: a peer that accepts and then
                // says nothing must still fail the probe in time.
                channel.eventLoop.scheduleTask(deadline: deadline) { channel.close(promise: nil) }
                if let tlsContext {
                    try channel.pipeline.syncOperations.addHandler(
                        NIOSSLClientHandler(context: tlsContext, serverHostname: serverName))
                }
                try channel.pipeline.syncOperations.addHTTPClientHandlers()
                return try NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>(
                    wrappingChannelSynchronously: channel)
            }
        }
        let host = serverName ?? target.description
        let path = spec.path
        let expected = spec.expectStatus
        return try await channel.executeThenClose { inbound, outbound in
            var headers = HTTPHeaders()
            headers.add(name: "Host", value: host)
            headers.add(name: "User-Agent", value: "conn-reaper")
            headers.add(name: "Connection", value: "close")
            try await outbound.write(.head(HTTPRequestHead(version: .http1_1, method: .GET, uri: path, headers: headers)))
            try await outbound.write(.end(nil))
            for try await part in inbound {
                if case .head(let head) = part {
                    let code = Int(head.status.code)
                    return (expected.contains(code), "HTTP \(code)")
                }
            }
            return (false, "connection closed before a response (timeout?)")
        }
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

    static func describe(_ error: any Error) -> String {
        switch error {
        case is ChannelError:
            if case .connectTimeout = error as? ChannelError { return "connect timeout" }
            if case .ioOnClosedChannel = error as? ChannelError { return "timeout" }
            return "\(error)"
        case let error as NIOConnectionError:
            return error.connectionErrors.first.map { "connect: \($0.error)" } ?? "connect failed"
        default:
            return "\(error)"
        }
    }
}
