import NetworkAddress

/// How to ask a backend whether it is alive.
public struct ProbeSpec: Sendable, Equatable {
    public enum Kind: String, Sendable, Codable, CaseIterable {
        case tcp, http, https
    }

    public struct TLS: Sendable, Equatable {
        public var caFile: String?
        public var certificateFile: String?
        public var keyFile: String?
        /// SNI and the name the certificate must carry; an IP address cannot be sent as SNI.
        public var serverName: String?
        public var insecureSkipVerify: Bool

        public init(
            caFile: String? = nil, certificateFile: String? = nil, keyFile: String? = nil,
            serverName: String? = nil, insecureSkipVerify: Bool = false
        ) {
            self.caFile = caFile
            self.certificateFile = certificateFile
            self.keyFile = keyFile
            self.serverName = serverName
            self.insecureSkipVerify = insecureSkipVerify
        }
    }

    public var kind: Kind
    /// nil: the backend's own port.
    public var port: UInt16?
    public var path: String
    public var expectStatus: Set<Int>
    public var timeout: Duration
    public var tls: TLS
    /// http/https: one kept-alive connection per backend, a request per probe on it (see ConnectionReuse).
    public var reuse: Bool
    /// With `reuse`: a fresh connection at least every this many probes.
    public var reconnectEvery: Int

    public static let defaultReconnectEvery = 10

    public init(
        kind: Kind = .tcp, port: UInt16? = nil, path: String = "/", expectStatus: Set<Int> = [200],
        timeout: Duration = .milliseconds(500), tls: TLS = TLS(), reuse: Bool = false,
        reconnectEvery: Int = ProbeSpec.defaultReconnectEvery
    ) {
        self.kind = kind
        self.port = port
        self.path = path
        self.expectStatus = expectStatus
        self.timeout = timeout
        self.tls = tls
        self.reuse = reuse
        self.reconnectEvery = reconnectEvery
    }
}

/// Why a probe failed, as far as the network lets a prober tell.
public enum ProbeFailure: String, Sendable, Codable, CaseIterable {
    /// An RST answered the SYN: the host is up and nothing listens on the port.
    case refused
    /// No SYN-ACK within the timeout, or the network said so (EHOSTUNREACH, ENETUNREACH).
    case unreachable
    /// TCP connected, then TLS failed, the HTTP status was not the expected one, or no answer came
    /// in time: something is there and it is not well (draining, overloaded, wedged).
    case unhealthy
    /// The prober itself could not try: no local port left toward the backend, no file descriptor,
    /// no buffer, a local rule. Says nothing about the backend: no verdict comes of it.
    case local

    /// Nothing answered on the port: the failures that can mean dead.
    public var nothingAnswered: Bool { self == .refused || self == .unreachable }

    /// What a failed connect's errno says.
    public init(connectErrno code: Int32?) {
        switch code {
        case 111?: self = .refused  // ECONNREFUSED
        case let code? where Self.localErrnos.contains(code): self = .local
        default: self = .unreachable
        }
    }

    /// EPERM, EACCES (a local rule), ENFILE, EMFILE, EADDRINUSE, EADDRNOTAVAIL (local ports
    /// exhausted), ENOBUFS, ENOMEM: the prober's own trouble, never the backend's.
    public static let localErrnos: Set<Int32> = [1, 13, 23, 24, 98, 99, 105, 12]
}

/// What one probe saw.
public struct ProbeResult: Sendable, Equatable {
    /// nil: the probe succeeded.
    public var failure: ProbeFailure?
    public var duration: Duration
    /// Why it failed, or the HTTP status it got.
    public var detail: String

    public var success: Bool { failure == nil }

    public init(failure: ProbeFailure?, duration: Duration, detail: String) {
        self.failure = failure
        self.duration = duration
        self.detail = detail
    }

    public static func succeeded(after duration: Duration, _ detail: String) -> ProbeResult {
        ProbeResult(failure: nil, duration: duration, detail: detail)
    }
}

extension ProbeResult {
    /// A health port other than the service's that found nothing answering, with what a connect to
    /// the service port found: when the service port takes the connection the health endpoint is
    /// gone or filtered, not the service (unhealthy, not a death). Dead needs the service port
    /// refusing or silent too; a connect that failed here (`local`) says nothing either way.
    public func withServicePort(_ service: ProbeResult) -> ProbeResult {
        guard let failure, failure.nothingAnswered else { return self }
        if service.success {
            return ProbeResult(failure: .unhealthy, duration: duration, detail: "\(detail); the service port answers")
        }
        if service.failure == .local {
            return ProbeResult(failure: .local, duration: duration, detail: "\(detail); the service port: \(service.detail)")
        }
        return ProbeResult(failure: failure, duration: duration, detail: "\(detail); the service port: \(service.detail)")
    }
}
