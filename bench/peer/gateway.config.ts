// Hive Gateway config for the benchmark's peer gateway.
//
// Serves ./supergraph.graphql (made by `mesh-compose`, see README.md). Partner base URLs and
// credentials are only checked for presence here: the supergraph's @transport directives carry `{env.COUNCIL_URL}`,
// `Bearer {env.LA_TOKEN}` etc., which @graphql-mesh/transport-rest resolves from process.env on
// every upstream request. They only need to be set in this process's environment.
//
// Listening: `--port`/`PORT` and `--host`/`HOST` (CLI flags and env vars win over the values here).
import { defineConfig } from '@graphql-hive/gateway';

// Unset, transport-rest would silently call http://127.0.0.1:80 / send "Bearer ": fail fast.
const required = ['COUNCIL_URL', 'ATW_URL', 'PHB_URL', 'LA_TOKEN', 'ATW_KEY', 'PHB_TOKEN'];
const missing = required.filter((name) => !process.env[name]);
if (missing.length > 0) {
  throw new Error(`peer gateway: set ${missing.join(', ')} in the environment`);
}

export const gatewayConfig = defineConfig({
  supergraph: './supergraph.graphql',
  host: '127.0.0.1',
  port: 4000,

  // Request deduplication OFF.
  // - Inbound (identical concurrent client requests sharing one execution): this is the only
  //   dedupe switch the gateway runtime has for REST sources (@graphql-hive/gateway-runtime
  //   `inboundInflightRequestDeduplication`, default false); pinned off explicitly here.
  // - Outbound: @graphql-mesh/transport-rest calls fetch once per resolved root field and has no
  //   dedupe path. (`deduplicateInflightRequests` exists only in @graphql-tools/executor-http,
  //   i.e. for GraphQL-over-HTTP subgraphs, which this supergraph has none of.)
  inboundInflightRequestDeduplication: false,

  // No response cache: `responseCaching` left unset (the plugin is only added when it is set).
  // No JIT, no persisted documents, no Hive reporting, no OpenTelemetry: all off unless configured.

  // Quiet: errors only. Set LOG_LEVEL=debug to see every upstream fetch (used to check dedupe).
  logging: (process.env.LOG_LEVEL as 'debug' | 'info' | 'warn' | 'error' | undefined) ?? 'error',

  // Nothing served but the GraphQL endpoint: no Laboratory/GraphiQL page, no landing page.
  graphiql: false,
  landingPage: false,
});
