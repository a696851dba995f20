// An independent authorization server for fhirimg's tests: node-oidc-provider issuing
// client_credentials access tokens for a resource indicator (RFC 8707), as JWTs (RFC 9068)
// for one resource and opaque (RFC 7662 introspection) for another.
// Usage: node server.mjs PORT JWT_RESOURCE OPAQUE_RESOURCE
import crypto from 'node:crypto';
import Provider from 'oidc-provider';

const [port, jwtResource, opaqueResource] = process.argv.slice(2);
const issuer = `http://127.0.0.1:${port}`;
const scopes = ['system/*.rs', 'system/ImagingStudy.rs', 'system/*.cruds', 'system/Patient.rs'];

function jwk(type, options, alg) {
  const { privateKey } = crypto.generateKeyPairSync(type, options);
  return { ...privateKey.export({ format: 'jwk' }), kid: crypto.randomUUID(), alg, use: 'sig' };
}

const provider = new Provider(issuer, {
  clients: [
    { client_id: 'ehr', client_secret: 'ehr-secret', grant_types: ['client_credentials'],
      redirect_uris: [], response_types: [], scope: scopes.join(' ') },
    { client_id: 'fhirimg-rs', client_secret: 'rs-secret', grant_types: [], redirect_uris: [],
      response_types: [] },
  ],
  scopes,
  jwks: { keys: [jwk('rsa', { modulusLength: 2048 }, 'RS256'), jwk('ec', { namedCurve: 'P-256' }, 'ES256')] },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => jwtResource,
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, indicator) => ({
        scope: scopes.join(' '),
        audience: indicator,
        accessTokenTTL: 300,
        accessTokenFormat: indicator === opaqueResource ? 'opaque' : 'jwt',
        jwt: { sign: { alg: 'ES256' } },
      }),
    },
  },
});
provider.listen(Number(port), '127.0.0.1', () => console.log(`oidc-provider listening at ${issuer}`));
