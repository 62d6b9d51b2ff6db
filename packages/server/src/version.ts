/** The version of @roost/server (reported by /v1/health and in the OpenAPI document). */
export const VERSION = '0.1.0';
