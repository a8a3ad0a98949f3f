extension ConntrackTable.Dump {
    /// A dump another module makes: a fake conntrack table's, for tests of what acts on dumps. (The
    /// memberwise initializer is internal to this module.)
    public init(entries: [ConntrackEntry], interrupted: Bool) {
        self.init()
        self.entries = entries
        self.interrupted = interrupted
    }
}
