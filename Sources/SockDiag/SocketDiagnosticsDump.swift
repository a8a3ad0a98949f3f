extension SocketDiagnostics.Dump {
    /// A dump another module makes: a fake socket table's, for tests of what acts on dumps. (The
    /// memberwise initializer is internal to this module.)
    public init(sockets: [DiagnosedSocket], interrupted: Bool) {
        self.init()
        self.sockets = sockets
        self.interrupted = interrupted
    }
}
