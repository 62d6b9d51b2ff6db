import js from '@eslint/js';
import tseslint from 'typescript-eslint';

/** The TypeScript the type-aware rules read: every package's sources and tests, and the integration tests. */
const typedFiles = ['packages/*/src/**/*.ts', 'test/**/*.ts'];

/** Imports a layer must not make, as both `import ... from` and `import()`. */
function forbidImports(packages, message) {
  return {
    'no-restricted-imports': [
      'error',
      { paths: packages.map((name) => ({ name, message })), patterns: packages.map((name) => ({ group: [`${name}/*`], message })) },
    ],
    'no-restricted-syntax': [
      'error',
      ...packages.map((name) => ({ selector: `ImportExpression[source.value=/^${name.replace('/', '\\/')}(\\/|$)/]`, message })),
    ],
  };
}

export default tseslint.config(
  { ignores: ['**/dist/**', 'node_modules/**', 'bench/results/**', 'guest/**', 'packages/actors/sdk/**', 'examples/**'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    languageOptions: {
      globals: {
        process: 'readonly',
        Buffer: 'readonly',
        console: 'readonly',
        setTimeout: 'readonly',
        clearTimeout: 'readonly',
        setInterval: 'readonly',
        clearInterval: 'readonly',
        performance: 'readonly',
        queueMicrotask: 'readonly',
        AbortController: 'readonly',
        AbortSignal: 'readonly',
        TextDecoder: 'readonly',
        URL: 'readonly',
      },
    },
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_' }],
      'no-constant-condition': ['error', { checkLoops: false }],
    },
  },
  {
    // A promise nobody awaits loses its rejection; one handed to a callback that ignores what it returns does too.
    files: typedFiles,
    languageOptions: { parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname } },
    rules: {
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/no-misused-promises': 'error',
    },
  },
  {
    // Tests beside the code are outside their package's tsconfig (it builds dist/), inside test/tsconfig.json.
    files: ['packages/*/src/**/*.test.ts'],
    languageOptions: { parserOptions: { projectService: false, project: ['test/tsconfig.json'], tsconfigRootDir: import.meta.dirname } },
  },
  {
    // Layers: the server's routes talk to the contract (@roost/api); only serve.ts, which builds the daemon, knows the core.
    files: ['packages/server/src/**/*.ts'],
    ignores: ['packages/server/src/serve.ts'],
    rules: forbidImports(['@roost/core'], 'only packages/server/src/serve.ts imports @roost/core: routes use the contract in @roost/api'),
  },
  {
    // Layers: the CLI is a face over core and the client, never over the server's internals.
    // `roost serve` (cli/src/serve.ts), `roost mcp` (cli/src/mcp.ts) and `roost e2b` (cli/src/e2b.ts, the keys of
    // the E2B face) are the exceptions: they run or manage the server's faces, and take only that from @roost/server.
    files: ['packages/cli/src/**/*.ts'],
    ignores: ['packages/cli/src/serve.ts', 'packages/cli/src/mcp.ts', 'packages/cli/src/e2b.ts'],
    rules: forbidImports(['@roost/server'], 'the CLI never imports @roost/server: use @roost/api (the contract), @roost/core or @roost/client'),
  },
);
