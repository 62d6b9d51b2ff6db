import { setup, loadAssets, type Assets, type SetupOptions } from './assets.js';
import { roostHome } from './home.js';
import { ImageStore } from './image/store.js';
import { Sandbox, type SandboxInfo, type SandboxOptions } from './sandbox.js';

/**
 * One Roost home and the sandboxes in it. `Sandbox.create()` and friends use
 * the default home ($ROOST_HOME or ~/.roost); a Runtime binds another one,
 * for example per tenant or per test:
 *
 * ```ts
 * const runtime = new Runtime({ home: '/var/lib/roost' });
 * await using sandbox = await runtime.create({ memoryMiB: 512 });
 * ```
 */
export class Runtime {
  /** The Roost home this runtime uses. */
  readonly home: string;

  #images: ImageStore | undefined;

  constructor(options: { home?: string } = {}) {
    this.home = roostHome(options.home);
  }

  /** The image store of this home: pull, list, remove, import and export images. */
  get images(): ImageStore {
    this.#images ??= new ImageStore({ home: this.home });
    return this.#images;
  }

  /** Creates and boots a sandbox in this home. */
  create(options: Omit<SandboxOptions, 'home'> = {}): Promise<Sandbox> {
    return Sandbox.create({ ...options, home: this.home });
  }

  /** Finds a sandbox by id or unique id prefix. */
  get(id: string): Promise<Sandbox> {
    return Sandbox.get(id, { home: this.home });
  }

  /** Lists the sandboxes, newest first. */
  list(): Promise<SandboxInfo[]> {
    return Sandbox.list({ home: this.home });
  }

  /** Installs and builds what sandboxes boot (see `roost setup`). */
  setup(options: Omit<SetupOptions, 'home'> = {}): Promise<Assets> {
    return setup({ ...options, home: this.home });
  }

  /** The built assets, or SETUP_REQUIRED naming `roost setup`. */
  assets(): Promise<Assets> {
    return loadAssets(this.home);
  }
}
