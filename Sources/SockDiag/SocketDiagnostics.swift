import Netlink
import NetworkAddress
import OS
import Synchronization

/// The sock_diag interface of one network namespace: dumps on one netlink socket, destroys on
/// others, so a destroy never has to wait behind a dump's replies.
public final class SocketDiagnostics {
    private let dumpSocket: NetlinkSocket
    /// Where a dump per family is needed (UDP), IPv6 dumps run beside IPv4 ones: each walks the
    /// whole socket table of the host.
    private let dumpSocket6: NetlinkSocket
    private let destroySocket: NetlinkSocket
    /// A large destroy is split in two, the second half on its own thread and socket: the kernel
    /// aborts each socket (and sends its RST) in the sender's context, so two senders use two cores.
    private let destroySocket2: NetlinkSocket

    /// Below this many sockets a second thread costs more than it saves.
    static let splitDestroyThreshold = 512

    /// Room for the acks of a full destroy batch: each queued ack costs about 1 KiB of truesize.
    static let destroyReceiveBuffer: Int32 = 16 << 20

    public init() throws(SystemCallError) {
        dumpSocket = try NetlinkSocket(bus: .sockDiag)
        dumpSocket6 = try NetlinkSocket(bus: .sockDiag)
        destroySocket = try NetlinkSocket(bus: .sockDiag)
        destroySocket2 = try NetlinkSocket(bus: .sockDiag)
        try dumpSocket.setReceiveTimeout(milliseconds: 10_000)
        try dumpSocket6.setReceiveTimeout(milliseconds: 10_000)
        for socket in [destroySocket, destroySocket2] {
            try socket.setReceiveTimeout(milliseconds: 10_000)
            try socket.setReceiveBufferSize(Self.destroyReceiveBuffer)
            try? socket.capAcknowledgements()
        }
    }

    public struct Dump: Sendable {
        public var sockets: [DiagnosedSocket] = []
        /// The kernel flagged a part of the dump as inconsistent: a socket may be missing.
        public var interrupted = false
        /// Runs begun again after ENOBUFS, and repeated after NLM_F_DUMP_INTR (see NetlinkSocket.dump).
        public var restarts = 0
        public var redone = 0
    }

    /// Tells, mid-dump, that a dump part has passed `count` sockets: what waits on a large purge
    /// can start before the walk ends.
    public struct CountSignal: Sendable {
        public let count: Int
        public let reached: @Sendable () -> Void

        public init(count: Int, reached: @escaping @Sendable () -> Void) {
            self.count = count
            self.reached = reached
        }
    }

    /// Every socket the kernel's filter lets through for `query`. Callers re-check matches.
    public func sockets(matching query: SocketQuery, signal: CountSignal? = nil) throws(SystemCallError) -> Dump {
        let oneWalk = Self.oneWalkForBothFamilies.withLock { $0 } != false
        do {
            return try dump(query.requests(oneWalk: oneWalk), signal: signal)
        } catch  where oneWalk && [.notSupported, .invalidArgument].contains(error.errno) && query.transports.contains(.tcp) {
            // A kernel without the old TCPDIAG_GETSOCK (never seen): a walk per family from now on.
            Self.oneWalkForBothFamilies.withLock { $0 = false }
            return try dump(query.requests(oneWalk: false), signal: signal)
        }
    }

    /// Whether the kernel takes TCPDIAG_GETSOCK: unknown (tried) until one is refused.
    static let oneWalkForBothFamilies = Mutex<Bool?>(nil)

    private func dump(_ requests: [InetDiagDumpRequest], signal: CountSignal?) throws(SystemCallError) -> Dump {
        // IPv6 per-family dumps on the second thread; everything else (IPv4 ones, TCP's one walk for
        // both families) on the first. No socket can be in both: another family or another transport.
        let ipv6 = requests.filter { $0.family == .inet6 }
        let ipv4 = requests.filter { $0.family != .inet6 }
        guard !ipv4.isEmpty, !ipv6.isEmpty else { return try Self.dump(requests, on: dumpSocket, signal: signal) }
        let socket6 = dumpSocket6
        let background = BackgroundWork { () throws(SystemCallError) -> Dump in try Self.dump(ipv6, on: socket6, signal: signal) }
        // Wait for the IPv6 half even when the IPv4 one fails: its thread uses dumpSocket6, and a
        // retry would otherwise run a second thread on the same netlink socket.
        let first = Result { () throws(SystemCallError) -> Dump in try Self.dump(ipv4, on: dumpSocket, signal: signal) }
        let other = try background.wait()
        var dump = try first.get()
        dump.sockets += other.sockets
        dump.interrupted = dump.interrupted || other.interrupted
        dump.restarts += other.restarts
        dump.redone += other.redone
        return dump
    }

    private static func dump(
        _ requests: [InetDiagDumpRequest], on socket: NetlinkSocket, signal: CountSignal? = nil
    ) throws(SystemCallError) -> Dump {
        var dump = Dump()
        var seen = Set<UInt64>()
        for request in requests {
            let outcome = try socket.dump(request) { message in
                guard let socket = DiagnosedSocket(message: message, transport: request.transport),
                    seen.insert(socket.id.cookie).inserted
                else { return }
                dump.sockets.append(socket)
                if dump.sockets.count == signal?.count { signal?.reached() }
            }
            dump.interrupted = dump.interrupted || outcome.interrupted
            dump.restarts += outcome.restarts
            dump.redone += outcome.redone
        }
        return dump
    }

    /// The socket with exactly this 4-tuple (local, remote), if there is one: a hash lookup in the
    /// kernel, not a walk. Its cookie then names it for a destroy.
    ///
    /// UDP's lookup (udp_dump_one) reads the request as a datagram arriving: source the peer,
    /// destination the local end ("src and dst are swapped for historical reasons"), and scores
    /// wildcards, so the local-first order finds nothing, or a server's unconnected socket on the
    /// peer's port. The request is turned around for UDP, and only a socket with exactly this
    /// 4-tuple is returned.
    public func socket(
        exactly id: SocketID, family: SocketFamily, transport: TransportProtocol, includeTCPInfo: Bool = false
    ) throws(SystemCallError) -> DiagnosedSocket? {
        var asked = id
        if transport == .udp { (asked.source, asked.destination) = (id.destination, id.source) }
        let request = InetDiagSocketRequest(.get, family: family, transport: transport, id: asked, includeTCPInfo: includeTCPInfo)
        guard let message = try dumpSocket.fetch(request) else {
            return nil
        }
        let found = DiagnosedSocket(message: message, transport: transport)
        // A dual-stack socket answers an IPv4 lookup with its IPv4-mapped addresses.
        guard let found, found.local.unmapped == id.source.unmapped, found.remote.unmapped == id.destination.unmapped else { return nil }
        return found
    }

    /// The local endpoints TCP listens on (an unspecified address: every address), in both
    /// families: a connection whose local end is one of them was accepted here, opened by its peer.
    /// Only endpoints come back, never sockets that could be handed to `destroy`.
    public func listeningEndpoints() throws(SystemCallError) -> [Endpoint] {
        let requests = SocketFamily.allCases.map { InetDiagDumpRequest(family: $0, transport: .tcp, states: .listenersOnly) }
        return try dump(requests, signal: nil).sockets.map(\.local)
    }

    /// SOCK_DESTROY for each socket, batched. ENOENT means already gone (closed meanwhile, or the
    /// cookie names an older socket on the same tuple): the caller counts it apart from a destroy.
    public func destroy(_ sockets: [DiagnosedSocket], batchSize: Int = 1024) throws(SystemCallError) -> [Acknowledgement] {
        guard sockets.count >= Self.splitDestroyThreshold else {
            return try destroySocket.exchangeAcknowledged(sockets.map(\.destroyRequest), batchSize: batchSize, quietSuccess: true)
        }
        let half = sockets.count / 2
        let second = Array(sockets[half...].map(\.destroyRequest))
        let socket2 = destroySocket2
        let background = BackgroundWork { () throws(SystemCallError) -> [Acknowledgement] in
            try socket2.exchangeAcknowledged(second, batchSize: batchSize, quietSuccess: true)
        }
        // Wait for the second half even when the first fails: its thread uses the socket.
        let first = Result { () throws(SystemCallError) -> [Acknowledgement] in
            try destroySocket.exchangeAcknowledged(sockets[..<half].map(\.destroyRequest), batchSize: batchSize, quietSuccess: true)
        }
        let rest = try background.wait()
        return try first.get() + rest
    }

    /// Destroys a tuple that cannot exist: ENOENT means the kernel can destroy sockets, EOPNOTSUPP
    /// that it was built without CONFIG_INET_DIAG_DESTROY. The kernel checks
    /// privilege only on a socket it found, so this probe cannot see EPERM.
    public func probeDestroySupport() throws(SystemCallError) -> Acknowledgement {
        let nowhere = Endpoint(address: .v4(0x7F00_0001), port: 1)
        let socket = DiagnosedSocket(
            family: .inet, transport: .tcp, state: .established, id: SocketID(source: nowhere, destination: nowhere))
        return try destroy([socket])[0]
    }
}
