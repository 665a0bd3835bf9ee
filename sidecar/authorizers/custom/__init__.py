"""The `lambda` authorizer: API Gateway's Lambda authorizer contract, run in process or against a remote service.

One job per module, each importing only those before it:

- `context`: the Lambda context object a handler receives;
- `invoke`: the `Invoker` interface, its failures, and the in-process `LocalInvoker`;
- `errors`: the reason codes and API Gateway's messages;
- `identity`: identity sources in API Gateway's syntax, read from a request;
- `events`: the four event formats (`token`, `request`, `http-1.0`, `http-2.0`);
- `responses`: a handler's response validated and its policy compiled;
- `authorizer`: `LambdaAuthorizer`, its result cache and single-flight;
- `settings`: the `type: lambda` config model and its `build`;
- `remote`: the `target: grpc://` invoker (imported only when a config names a target).
"""
