import Logging

/// A logger that writes nothing: tests that provoke failures on purpose stay readable.
public func quietLogger(_ label: String = "test") -> Logger {
    Logger(label: label, factory: { _ in SwiftLogNoOpLogHandler() })
}
