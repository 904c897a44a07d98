// GraphQL Mesh compose config for the benchmark's peer gateway.
//
// Three partner REST APIs (shared/upstreams/*.md) become three subgraphs of one supergraph.
// The ILF is left out: it publishes only a nightly CSV extract, with no per-person endpoint.
//
// Composing reads only the JSON Schemas in ./schemas (no partner needs to be running).
// The `{env.*}` placeholders are NOT resolved here: they are written into the supergraph's
// @transport directives as-is and resolved by @graphql-mesh/transport-rest on every upstream
// request, from the gateway process's environment (COUNCIL_URL, ATW_URL, PHB_URL, LA_TOKEN,
// ATW_KEY, PHB_TOKEN). So one supergraph serves sandboxes on any ports.
import { defineConfig } from '@graphql-mesh/compose-cli';
import { loadJSONSchemaSubgraph } from '@omnigraph/json-schema';

export const composeConfig = defineConfig({
  output: 'supergraph.graphql',
  // The three sources are independent root fields; no entity keys are wanted (Mesh would
  // otherwise guess @key(client_id) and @key(council_code) from councilPersonalBudgets(clientId)).
  ignoreSemanticConventions: true,
  subgraphs: [
    {
      sourceHandler: loadJSONSchemaSubgraph('Council', {
        endpoint: '{env.COUNCIL_URL}',
        operationHeaders: { Authorization: 'Bearer {env.LA_TOKEN}' },
        operations: [
          {
            type: 'Query',
            field: 'councilPersonalBudgets',
            description: 'GET /api/v1/clients/{client_id}/personal-budgets (raw)',
            method: 'GET',
            path: '/api/v1/clients/{args.clientId}/personal-budgets',
            argTypeMap: { clientId: { type: 'string' } },
            requiredArgs: ['clientId'],
            responseSchema: './schemas/council-personal-budgets.json',
          },
          {
            type: 'Query',
            field: 'councilClients',
            description: 'GET /api/v1/clients?nhs_number= (raw)',
            method: 'GET',
            path: '/api/v1/clients',
            queryParamArgMap: { nhs_number: 'nhsNumber' },
            argTypeMap: { nhsNumber: { type: 'string' } },
            requiredArgs: ['nhsNumber'],
            responseSchema: './schemas/council-clients.json',
          },
        ],
      }),
    },
    {
      sourceHandler: loadJSONSchemaSubgraph('AccessToWork', {
        endpoint: '{env.ATW_URL}',
        operationHeaders: { 'X-Api-Key': '{env.ATW_KEY}' },
        operations: [
          {
            type: 'Query',
            field: 'atwAwards',
            description: 'GET /atw/v2/claimants/{nino}/awards (raw)',
            method: 'GET',
            path: '/atw/v2/claimants/{args.nino}/awards',
            argTypeMap: { nino: { type: 'string' } },
            requiredArgs: ['nino'],
            responseSchema: './schemas/atw-awards.json',
          },
        ],
      }),
    },
    {
      sourceHandler: loadJSONSchemaSubgraph('HealthBoard', {
        endpoint: '{env.PHB_URL}',
        operationHeaders: { Authorization: 'Bearer {env.PHB_TOKEN}' },
        operations: [
          {
            type: 'Query',
            field: 'phbBudgets',
            description: 'GET /phb/v1/patients/{nhs_number}/budgets (raw)',
            method: 'GET',
            path: '/phb/v1/patients/{args.nhsNumber}/budgets',
            argTypeMap: { nhsNumber: { type: 'string' } },
            requiredArgs: ['nhsNumber'],
            responseSchema: './schemas/phb-budgets.json',
          },
        ],
      }),
    },
  ],
});
