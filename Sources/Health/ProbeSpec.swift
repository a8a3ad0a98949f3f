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

    public init(
        kind: Kind = .tcp, port: UInt16? = nil, path: String = "/", expectStatus: Set<Int> = [200],
        timeout: Duration = .milliseconds(500), tls: TLS = TLS()
    ) {
        self.kind = kind
        self.port = port
        self.path = path
        self.expectStatus = expectStatus
        self.timeout = timeout
        self.tls = tls
    }
}

/// What one probe saw.
public struct ProbeResult: Sendable, Equatable {
    public var success: Bool
    public var duration: Duration
    /// Why it failed, or the HTTP status it got.
    public var detail: String

    public init(success: Bool, duration: Duration, detail: String) {
        self.success = success
        self.duration = duration
        self.detail = detail
    }
}
